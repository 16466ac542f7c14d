"""The pod spec → `podman run` mapping (pure): every Deployment and Job the program
declares maps with nothing dropped, a field it does not know is refused, and the images'
Containerfiles take their user, ports and writable paths from the same builders."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from modelrail.errors import InvalidInputError
from modelrail.images import podspec
from modelrail.images.build import containerfile
from modelrail.infra import manifests
from modelrail.infra.config import load_stack
from modelrail.serving.config import ModelRef

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("dev", "staging", "prod")


def _pod_specs(stack: str) -> dict[str, dict[str, Any]]:
    cfg = load_stack(stack, ROOT)
    out = {f"deployment/{m.name}": manifests.model_deployment(cfg, m)["spec"]["template"]["spec"]
           for m in cfg.models}
    out["deployment/controller"] = manifests.controller_deployment(cfg)["spec"]["template"]["spec"]
    out["job/loadtest"] = manifests.load_job(
        cfg, name="iris-load", model="iris", version="2", target="http://iris-canary:3000",
        rows=[[1.0, 2.0, 3.0, 4.0]], seconds=5, users=2)["spec"]["template"]["spec"]
    return out


def _opts(run: podspec.ContainerRun) -> list[str]:
    return list(run.args[:run.args.index(run.image)])


@pytest.mark.parametrize("stack", STACKS)
def test_every_pod_the_program_declares_maps_without_loss(stack: str) -> None:
    for what, spec in _pod_specs(stack).items():
        run = podspec.container_run(spec, name="x", network="modelrail")
        opts = _opts(run)
        container = spec["containers"][0]
        sec = spec["securityContext"]
        assert f"{sec['runAsUser']}:{sec['runAsGroup']}" == opts[opts.index("--user") + 1], what
        assert "--read-only" in opts and "--read-only-tmpfs=false" in opts, what
        assert opts[opts.index("--cap-drop") + 1] == "all", what
        assert "no-new-privileges" in opts, what
        assert "--privileged" not in opts and "seccomp=unconfined" not in " ".join(opts)
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        assert list(run.writable) == mounts, what
        assert [o for o in opts if o.startswith("type=tmpfs")] == [
            f"type=tmpfs,destination={m},tmpfs-mode=0777" for m in mounts], what
        assert run.env == {e["name"]: e["value"] for e in container.get("env", [])}, what
        assert run.args[len(opts) + 1:] == tuple(container.get("args", [])), what
        assert run.grace_seconds == spec.get("terminationGracePeriodSeconds", 30)


def test_the_inference_pod_probes_and_ports_come_from_the_deployment() -> None:
    spec = _pod_specs("prod")["deployment/iris"]
    run = podspec.container_run(spec, name="x", network="modelrail")
    assert run.ports == {"http": manifests.HTTP_PORT, "grpc": manifests.GRPC_PORT}
    assert run.readiness == podspec.Probe(path="/v2/health/ready", port=3000, period=5,
                                          failure_threshold=2)
    assert run.startup is not None and run.startup.path == "/v2/health/live"
    # serves on through the preStop sleep before SIGTERM, within the grace period
    assert run.pre_stop_seconds == manifests.PRE_STOP_SECONDS < run.grace_seconds
    limits = spec["containers"][0]["resources"]["limits"]
    opts = _opts(run)
    assert float(opts[opts.index("--cpus") + 1]) == podspec.cpus(limits["cpu"])
    assert int(opts[opts.index("--memory") + 1]) == podspec.memory_bytes(limits["memory"])


@pytest.mark.parametrize(("where", "key", "value"), [
    ("pod", "hostNetwork", True),
    ("pod", "initContainers", []),
    ("container", "lifecycle", {"preStop": {"exec": {"command": ["sleep", "5"]}}}),
    ("container", "envFrom", []),
    ("security", "privileged", True),
])
def test_a_field_it_does_not_map_is_refused_by_name(where: str, key: str, value: Any) -> None:
    spec = copy.deepcopy(_pod_specs("dev")["deployment/iris"])
    target = {"pod": spec, "container": spec["containers"][0],
              "security": spec["containers"][0]["securityContext"]}[where]
    target[key] = value
    with pytest.raises(podspec.UnsupportedFieldError, match=key):
        podspec.container_run(spec, name="x", network="modelrail")


def test_run_as_root_is_refused() -> None:
    spec = copy.deepcopy(_pod_specs("dev")["deployment/iris"])
    spec["securityContext"]["runAsUser"] = 0
    with pytest.raises(InvalidInputError, match="runAsNonRoot"):
        podspec.container_run(spec, name="x", network="modelrail")


def test_env_from_secrets_is_refused_not_dropped() -> None:
    spec = copy.deepcopy(_pod_specs("dev")["deployment/iris"])
    spec["containers"][0]["env"].append({"name": "TOKEN", "valueFrom": {"secretKeyRef": {}}})
    with pytest.raises(podspec.UnsupportedFieldError, match="TOKEN"):
        podspec.container_run(spec, name="x", network="modelrail")


@pytest.mark.parametrize(("value", "cores"), [("250m", 0.25), ("1", 1.0), (2, 2.0),
                                              ("1.5", 1.5)])
def test_cpu_quantities(value: Any, cores: float) -> None:
    assert podspec.cpus(value) == cores


@pytest.mark.parametrize(("value", "size"), [("512Mi", 512 * 2**20), ("1Gi", 2**30),
                                             ("1G", 10**9), (1024, 1024)])
def test_memory_quantities(value: Any, size: int) -> None:
    assert podspec.memory_bytes(value) == size


@pytest.mark.parametrize("bad", ["1.5x", "-1", "", "10m"])
def test_bad_memory_quantities_say_what_is_accepted(bad: str) -> None:
    with pytest.raises(InvalidInputError, match="accepted"):
        podspec.memory_bytes(bad)


def test_the_inference_containerfile_follows_the_deployment() -> None:
    cfg = load_stack("dev", ROOT)
    container = manifests.model_deployment(cfg, cfg.models[0])["spec"]["template"]["spec"][
        "containers"][0]
    text = containerfile("inference", base="localhost/modelrail/base:x",
                         models=(ModelRef("iris", "1", "a" * 64),))
    lines = text.splitlines()
    assert f"USER {manifests.RUN_AS}:{manifests.RUN_AS}" in lines
    assert f"EXPOSE {manifests.HTTP_PORT} {manifests.GRPC_PORT}" in lines
    assert [p["containerPort"] for p in container["ports"]] == [manifests.HTTP_PORT,
                                                                manifests.GRPC_PORT]
    # the emptyDir mount points are not in the image (a tmpfs over them must be writable)
    for mount in container["volumeMounts"]:
        if mount["mountPath"] != "/tmp":
            assert f"rm -rf {mount['mountPath']}" in text
    assert "--network" not in text and "pip install" in text and "--no-index" in text
    assert f'MODELRAIL_MODELS="iris:1@sha256:{"a" * 64}"' in text


@pytest.mark.parametrize("kind", ["controller", "loadtest"])
def test_the_job_and_operator_images_run_as_the_same_user(kind: str) -> None:
    text = containerfile(kind, base="b")
    assert f"USER {manifests.RUN_AS}:{manifests.RUN_AS}" in text.splitlines()
    assert "ENTRYPOINT []" in text  # the Deployment and the Job give the command
