"""Environment parity: the three stacks differ only in configured values; a hard-coded
difference or an object in one environment only is caught."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from modelrail.infra import manifests, parity
from modelrail.infra.config import load_stack
from tests.infra.harness import ROOT


def test_stacks_have_parity() -> None:
    for a, b in (("dev", "staging"), ("staging", "prod"), ("dev", "prod")):
        diffs = parity.diff(load_stack(a, ROOT), load_stack(b, ROOT))
        assert diffs, "the stacks are expected to differ in configured values"
        assert parity.unexplained(diffs) == []
        keys = {d.explained_by for d in diffs}
        assert {"namespace", "autoscaling.minReplicas", "rollout.steps",
                "resources.cpuRequest"} <= keys


def test_hard_coded_difference_breaks_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    original = manifests.model_deployment

    def drifted(cfg: Any, model: Any, *, track: str = "stable") -> dict[str, Any]:
        obj = original(cfg, model, track=track)
        if cfg.environment == "prod":  # the kind of special case parity must catch
            obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Always"
        return obj

    monkeypatch.setattr(manifests, "model_deployment", drifted)
    bad = parity.unexplained(parity.diff(load_stack("dev", ROOT), load_stack("prod", ROOT)))
    assert [(d.obj, d.path, d.b) for d in bad] == [
        ("apps/v1/Deployment/diabetes-stable",
         "spec.template.spec.containers[0].imagePullPolicy", "Always"),
        ("apps/v1/Deployment/iris-stable",
         "spec.template.spec.containers[0].imagePullPolicy", "Always")]


def test_object_in_one_environment_only_breaks_parity(monkeypatch: pytest.MonkeyPatch) -> None:
    original = manifests.environment

    def drifted(cfg: Any) -> list[dict[str, Any]]:
        objs = original(cfg)
        if cfg.environment == "staging":
            objs.append({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": "debug", "namespace": cfg.namespace}})
        return objs

    monkeypatch.setattr(manifests, "environment", drifted)
    bad = parity.unexplained(parity.diff(load_stack("dev", ROOT), load_stack("staging", ROOT)))
    assert [(d.obj, d.a, d.b) for d in bad] == [("v1/ConfigMap/debug", "absent", "present")]


def test_a_model_in_one_stack_only_is_a_configured_difference(tmp_path: Any) -> None:
    text = (ROOT / "Pulumi.dev.yaml").read_text()
    (tmp_path / "Pulumi.dev.yaml").write_text(text)
    (tmp_path / "Pulumi.canary.yaml").write_text(
        text.replace("    - name: diabetes\n      version: \"1\"\n", ""))
    diffs = parity.diff(load_stack("dev", tmp_path), load_stack("canary", tmp_path))
    assert parity.unexplained(diffs) == []
    assert {d.explained_by for d in diffs if d.path == ""} == {"models"}


def test_cli_render_diff_and_parity(tmp_path: Any) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "modelrail", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)

    out = tmp_path / "dev"
    res = run("render", "--stack", "dev", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert len(list(out.glob("*.yaml"))) == len(manifests.render(load_stack("dev", ROOT)))
    stream = run("render", "--stack", "prod")
    assert stream.returncode == 0 and "kind: ModelRollout" in stream.stdout
    diff = run("env", "diff", "dev", "prod")
    assert diff.returncode == 0 and "0 not explained by configuration" in diff.stdout
    assert "[configured: autoscaling.maxReplicas]" in diff.stdout
    assert run("env", "parity").returncode == 0
    missing = run("render", "--stack", "qa")
    assert missing.returncode == 2 and "one of the stacks: dev, prod, staging" in missing.stderr
