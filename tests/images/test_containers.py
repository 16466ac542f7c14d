"""The real images, run with podman+runc exactly as the program's pod specs say: the same
user, a read-only root with only the emptyDirs writable, no capabilities, no new
privileges, the runtime's default seccomp profile, the same env, ports and probes."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from modelrail.images import podman
from modelrail.images.build import SBOM_PATH, BuiltImage, build_image, build_inference
from modelrail.images.podman import ContainerError
from modelrail.images.podspec import container_run
from modelrail.images.run import check_non_root
from modelrail.infra import manifests
from modelrail.infra.config import ModelSpec, StackConfig
from modelrail.models.parity import TOL_ABS, TOL_REL
from modelrail.serving.config import parse_model_ref
from tests.conftest import Example
from tests.images.conftest import MODELS, pod

pytestmark = pytest.mark.slow
ROWS = 20
WALK = r"""
import os, sys
skip = {"/proc", "/sys", "/dev"}
found = []
for root, dirs, _ in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
    probe = os.path.join(root, ".modelrail-write-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except OSError:
        continue
    os.close(fd)
    os.unlink(probe)
    found.append(root)
print("\n".join(found))
"""


def _inference_spec(cfg: StackConfig, version: str = "1") -> dict[str, Any]:
    model = ModelSpec(name="iris", version=version)
    spec: dict[str, Any] = manifests.model_deployment(cfg, model)["spec"]["template"]["spec"]
    return spec


def _roots(paths: list[str]) -> set[str]:
    """The writable places, without their subfolders."""
    return {p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/")
                                        for q in paths)}


def test_images_carry_labels_sbom_and_a_numeric_non_root_user(
        images: dict[str, BuiltImage], examples: dict[str, Example]) -> None:
    for kind, img in images.items():
        info = podman.inspect_image(img.ref)
        user = str(info["Config"]["User"]).split(":")[0]
        assert user.isdigit() and int(user) == manifests.RUN_AS, kind
        labels = info["Labels"]
        assert labels["org.opencontainers.image.revision"] not in ("", "unknown"), kind
        assert labels["modelrail.content"] == img.content
        sbom = json.loads(img.sbom.read_text())
        names = {c["name"].lower() for c in sbom["components"]}
        assert {"modelrail", "python3.11"} <= names, kind
        assert "pip" not in names, f"{kind} still carries a package manager"
    inference = images["inference"]
    pinned = [parse_model_ref(m) for m in inference.labels["modelrail.models"].split(",")]
    assert [m.tag for m in pinned] == list(MODELS)
    models = {c["name"] + ":" + c["version"]: c["hashes"][0]["content"]
              for c in json.loads(inference.sbom.read_text())["components"]
              if c["type"] == "machine-learning-model"}
    for ref in pinned:  # the label, the SBOM and the registry agree on every model's bytes
        assert ref.sha256 == examples[ref.tag].card.sha256 == models[ref.tag]
    assert podman.read_file(inference.ref, SBOM_PATH) == inference.sbom.read_bytes()


def test_a_second_build_of_the_same_content_is_found_not_rebuilt(
        images: dict[str, BuiltImage]) -> None:
    again = build_image("loadtest")
    assert not again.built and again.ref == images["loadtest"].ref
    assert again.digest == images["loadtest"].digest
    inference = build_inference([parse_model_ref(m) for m in MODELS])
    assert not inference.built and inference.image_id == images["inference"].image_id


def _check(ex: Example, got: dict[str, Any]) -> None:
    x = ex.split.X_test[:ROWS]
    np.testing.assert_array_equal(np.asarray(got["label"]).reshape(-1), ex.estimator.predict(x))
    np.testing.assert_allclose(np.asarray(got["probabilities"]), ex.estimator.predict_proba(x),
                               rtol=TOL_REL, atol=TOL_ABS)


def test_inference_runs_restricted_and_answers_like_the_original(
        images: dict[str, BuiltImage], examples: dict[str, Example], dev: StackConfig) -> None:
    spec = _inference_spec(dev)
    with pod(spec, image=images["inference"].ref, name="mr-test-inference") as c:
        assert c.wait_ready(timeout=120), c.logs()[-3000:]
        ex = examples["iris:1"]
        x = ex.split.X_test[:ROWS].astype(np.float32)
        http = thttp.InferenceServerClient(c.target("http"))
        assert http.is_server_ready() and http.is_model_ready("iris", "1")
        inp = thttp.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        res = http.infer("iris", [inp], model_version="1")
        _check(ex, {o.name: res.as_numpy(o.name) for o in ex.card.outputs})
        grpc = tgrpc.InferenceServerClient(c.target("grpc"))
        ginp = tgrpc.InferInput("input", list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        gres = grpc.infer("iris", [ginp], model_version="1")
        _check(ex, {o.name: gres.as_numpy(o.name) for o in ex.card.outputs})
        # the pod serves only the version its env names, though the image carries two
        assert not http.is_model_ready("iris", "2")

        status = c.exec("cat", "/proc/1/status").stdout
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        uid = str(manifests.RUN_AS)
        assert fields["Uid"].split() == [uid] * 4 and fields["Gid"].split()[0] == uid
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
        assert fields["NoNewPrivs"].strip() == "1"
        assert fields["Seccomp"].strip() == "2"  # a filter: the runtime's default profile
        walk = c.exec("python", "-c", WALK, timeout=120)
        assert walk.returncode == 0, walk.stderr
        writable = _roots(walk.stdout.split())
        assert writable == set(c.run.writable), (
            f"writable outside the declared emptyDirs: {sorted(writable - set(c.run.writable))}")


def test_sigterm_under_load_loses_no_request_in_flight(
        images: dict[str, BuiltImage], examples: dict[str, Example], dev: StackConfig) -> None:
    rows = examples["iris:1"].split.X_test[:4].tolist()
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 4],
                        "data": [v for r in rows for v in r]}]}
    with pod(_inference_spec(dev), image=images["inference"].ref, name="mr-test-drain") as c:
        assert c.wait_ready(timeout=120), c.logs()[-3000:]
        url = c.url("http") + "/v2/models/iris/versions/1/infer"
        stopping = threading.Event()
        counts = {"ok": 0, "lost": 0}
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                for _ in range(2000):  # bounded
                    if stopping.is_set():
                        return  # like an endpoint removed: nothing new after SIGTERM
                    try:
                        ok = http.post(url, json=body).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with lock:
                        counts["ok" if ok else "lost"] += 1

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(3.0)
        stopping.set()
        c.kill("TERM")  # SIGTERM with requests in flight, as a kubelet sends it
        for t in threads:
            t.join(60)
        code = c.wait(timeout=float(c.run.grace_seconds) + 10)
    assert counts["ok"] > 100
    assert counts["lost"] == 0, counts
    assert code == 0


def test_an_image_whose_model_bytes_were_altered_never_becomes_ready(
        images: dict[str, BuiltImage], dev: StackConfig, tmp_path: Any) -> None:
    ref = "localhost/modelrail/test-tampered:latest-test"
    model = "/home/bentoml/bento/models/iris/1/model.onnx"
    (tmp_path / "Containerfile").write_text(
        f"FROM {images['inference'].ref}\nUSER 0\n"
        f"RUN python -c \"p='{model}'; b=bytearray(open(p,'rb').read()); b[-1]^=1; "
        f"open(p,'wb').write(bytes(b))\"\nUSER {manifests.RUN_AS}:{manifests.RUN_AS}\n")
    podman.build(tmp_path, containerfile=tmp_path / "Containerfile", tag=ref,
                 labels={podman.OWNER_LABEL: "modelrail-test"})
    try:
        with pod(_inference_spec(dev), image=ref, name="mr-test-tampered") as c:
            assert not c.wait_ready(timeout=60)
            logs = c.logs()
        assert "sha256" in logs, logs[-3000:]
    finally:
        podman.remove_image(ref)


def test_the_load_test_image_runs_a_bounded_job_and_reports_by_termination_message(
        images: dict[str, BuiltImage], examples: dict[str, Example], dev: StackConfig) -> None:
    rows = examples["iris:1"].split.X_test[:8].tolist()
    with pod(_inference_spec(dev), image=images["inference"].ref, name="mr-test-target") as t:
        assert t.wait_ready(timeout=120), t.logs()[-3000:]
        job = manifests.load_job(dev, name="iris-load", model="iris", version="1",
                                 target=t.url("http"), rows=rows, seconds=4, users=2)
        spec = job["spec"]["template"]["spec"]
        with pod(spec, image=images["loadtest"].ref, name="mr-test-locust") as j:
            code = j.wait(timeout=float(job["spec"]["activeDeadlineSeconds"]))
            message = j.termination_message()
            logs = j.logs()
    assert code == 0, logs[-3000:]
    summary = json.loads(message)
    assert summary["requests"] > 20 and summary["failures"] == 0, summary


def test_the_controller_image_starts_the_operator_as_its_deployment_says(
        images: dict[str, BuiltImage], dev: StackConfig) -> None:
    spec = manifests.controller_deployment(dev)["spec"]["template"]["spec"]
    # no cluster here (the real-cluster issue brings one): kopf starts, the operator's
    # startup handler reads its stack from the image and looks for the API server
    with pod(spec, image=images["controller"].ref, name="mr-test-operator") as c:
        deadline = time.monotonic() + 90
        logs = ""
        while time.monotonic() < deadline and "No configuration found" not in logs:
            time.sleep(2)
            logs = c.logs()
    assert "modelrail/rollout/kube/operator.py" in logs, logs[-3000:]
    assert "Invalid kube-config file. No configuration found" in logs, logs[-3000:]
    check = {**spec, "containers": [{**spec["containers"][0], "args": [
        "python", "-c", "import kopf, modelrail.rollout.kube.operator as o; print(o.__name__)"]}]}
    with pod(check, image=images["controller"].ref, name="mr-test-operator-import") as c:
        assert c.wait(timeout=90) == 0, c.logs()[-3000:]


def test_an_image_that_runs_as_root_is_refused_for_a_non_root_pod(
        images: dict[str, BuiltImage], dev: StackConfig) -> None:
    spec = _inference_spec(dev)
    spec["securityContext"] = {k: v for k, v in spec["securityContext"].items()
                               if k not in ("runAsUser", "runAsGroup")}
    base = images["inference"].labels["org.opencontainers.image.base.name"]
    run = container_run(spec, name="x", network=podman.NETWORK, image=base)
    with pytest.raises(ContainerError, match="root"):
        check_non_root(run)
    check_non_root(container_run(spec, name="x", network=podman.NETWORK,
                                 image=images["inference"].ref))  # USER 1034: accepted


INNER_CONFTEST = """
from tests.leakcheck import LeakCheck, mark_session

CHECK = LeakCheck(marker=mark_session(), grace=1.0)


def pytest_configure(config):
    config.pluginmanager.register(CHECK, "leak-check")
"""
INNER_TEST = """
import os

from modelrail.images import podman


def test_starts_a_container_and_{verb}_it():
    podman.podman("run", "--detach", "--name", os.environ["INNER_NAME"], "--network", "none",
                  *podman.label_args(), *podman.ULIMITS, os.environ["INNER_IMAGE"],
                  "sleep", "60")
    {end}
"""


@pytest.mark.parametrize("leaky", [True, False], ids=["leaky", "clean"])
def test_the_leak_check_fails_a_session_that_leaves_a_container(
        images: dict[str, BuiltImage], tmp_path: Any, leaky: bool) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    name = f"mr-test-leak-{'leaky' if leaky else 'clean'}"
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TEST.format(
        verb="forgets" if leaky else "removes",
        end="" if leaky else "podman.remove_container(os.environ['INNER_NAME'])"))
    base = images["inference"].labels["org.opencontainers.image.base.name"]
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
            cwd=tmp_path, capture_output=True, text=True, timeout=180, check=False,
            env={**os.environ, "PYTHONPATH": str(root), "INNER_NAME": name,
                 "INNER_IMAGE": base})
        out = run.stdout + run.stderr
        if leaky:
            assert "1 passed" in out and run.returncode == 1, out
            assert f"container not removed (removed now): {name}" in out, out
        else:
            assert run.returncode == 0 and "leak check" not in out, out
        assert podman.inspect_container(name) is None  # removed either way
    finally:
        podman.remove_container(name)
