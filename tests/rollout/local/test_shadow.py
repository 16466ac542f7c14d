"""The shadow phase end to end on a real local environment: real BentoML servers behind
Traefik, stable's mirror sending a share of the users' requests through Traefik's shadow
router to the canary, the controller judging the paired answers.

A candidate that answers the validation sample like stable (iris:2, a random forest, agrees
with iris:1 on every held-out row, so the pre-traffic analysis passes) but differs on a
shifted live distribution (the client's sepal measurements doubled: a unit changed
upstream) is rolled back in the shadow phase, and no user request was answered by it; on
the unshifted distribution the same candidate passes the shadow phase and is promoted with
zero failed user requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from modelrail.exit_codes import ExitCode
from modelrail.rollout.load.client import ClientTraffic
from tests.conftest import Example
from tests.rollout.envs import ROOT, cli, local_env, write_stack

pytestmark = pytest.mark.slow
FAST = ("--step-seconds", "5", "--steps", "25,50,100")
SHIFT = np.array([2.0, 2.0, 1.0, 1.0])  # sepal length and width doubled upstream


def _bodies(rows: np.ndarray, per: int = 4) -> list[dict[str, Any]]:
    return [{"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(chunk), 4],
                         "data": chunk.reshape(-1).tolist()}]}
            for chunk in (rows[i:i + per] for i in range(0, len(rows), per))]


def _history(state: Path, env: str) -> list[dict[str, Any]]:
    out = cli("rollout", "history", "--env", env, "-o", "json", state_dir=state)
    assert out.returncode == 0, out.stderr
    data: list[dict[str, Any]] = json.loads(out.stdout)
    return data


def test_the_shadow_phase_rolls_back_a_candidate_wrong_on_live_inputs_and_passes_a_good_one(
        examples: dict[str, Example], tmp_path: Path) -> None:
    project, state = tmp_path / "project", tmp_path / "state"
    policy = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"][
        "modelrail:rollout"]
    write_stack(project, "sh1", rollout={**policy, "shadow": {"percent": 50,
                                                              "minPairs": 200}})
    rows = examples["iris:1"].split.X_test
    with local_env(project, state, "sh1") as info:
        url = f"{info['http']}/v2/models/iris/infer"

        # 1. live inputs from a shifted distribution: rolled back in the shadow phase
        shifted = _bodies(rows * SHIFT)
        traffic = ClientTraffic(url, shifted[0], bodies=shifted, pause=0.01,
                                max_seconds=240).start()
        run = cli("rollout", "start", "--env", "sh1", "--model", "iris:2", "--wait", *FAST,
                  "-o", "json", state_dir=state)
        results = traffic.stop()
        assert run.returncode == ExitCode.ROLLED_BACK, run.stdout + run.stderr
        summary = json.loads(run.stdout)
        assert summary["phase"] == "RolledBack"
        assert "shadow phase failed" in summary["message"], summary["message"]
        shadow = summary["shadow"]
        assert shadow["pairs"] > 0 and shadow["disagreement_low"] > 0.05, shadow
        assert shadow["answered"] > 0 and shadow["failed"] == 0, shadow
        # every user request answered, and all by stable: none by the candidate
        assert set(results) == {200}, results
        assert set(traffic.versions) == {"1"} and traffic.versions["1"] == results[200]
        phases = [h["to"] for h in summary["history"]]
        assert "Shadowing" in phases and "Progressing" not in phases, phases
        assert all(h["weight"] == 0 for h in summary["history"])
        # the audit log has the shadow phase's evidence
        audited = [e for e in _history(state, "sh1")
                   if (e["measurements"] or {}).get("shadow_total")]
        assert audited and any(c["name"] == "shadow" and c["status"] == "FAIL"
                               for e in audited for c in e["checks"]), audited[-1]
        text = cli("rollout", "status", "--env", "sh1", "--model", "iris", state_dir=state)
        assert "shadow phase:" in text.stdout and "answers compared" in text.stdout, text.stdout

        # 2. the users' usual distribution: the same candidate passes, nobody fails
        usual = _bodies(rows)
        traffic = ClientTraffic(url, usual[0], bodies=usual, pause=0.01,
                                max_seconds=240).start()
        run = cli("rollout", "start", "--env", "sh1", "--model", "iris:2", "--wait", *FAST,
                  "-o", "json", state_dir=state)
        results = traffic.stop()
        assert run.returncode == 0, run.stdout + run.stderr
        summary = json.loads(run.stdout)
        assert summary["phase"] == "Succeeded"
        shadow = summary["shadow"]
        assert shadow["pairs"] >= 200 and shadow["disagreement_high"] < 0.2, shadow
        assert set(results) == {200} and results[200] > 100, results  # zero failed
        phases = [h["to"] for h in summary["history"]]
        assert phases.index("Shadowing") < phases.index("Progressing"), phases
        first_weight = next(h for h in summary["history"] if h["weight"] > 0)
        assert "shadow: PASS" in (first_weight["verdict"] or ""), first_weight
        report = tmp_path / "report.html"
        out = cli("rollout", "report", "--env", "sh1", "--out", str(report), state_dir=state)
        assert out.returncode == 0, out.stderr
        html = report.read_text()
        assert "Shadow phase (50% of stable" in html and "answers compared" in html
