"""The ModelRollout contract: the CRD schema and the operator's parser come from one
definition, so a full spec passes both and round-trips; what one refuses, the other does."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from modelrail.exit_codes import ExitCode
from modelrail.infra.config import load_stack
from modelrail.infra.manifests import model_rollout, rollout_crd
from modelrail.rollout import api
from modelrail.rollout.core.spec import Phase
from tests.infra.harness import ROOT
from tests.infra.schemas import _closed, _crd_schema

FULL: dict[str, Any] = {
    "model": "iris", "version": "2", "sha256": "ab" * 32, "steps": [5, 25, 50, 100],
    "stepSeconds": 30, "analysisIntervalSeconds": 10,
    "thresholds": {"maxErrorRate": 0.02, "maxP99LatencyMs": 80.0, "maxLatencyRatio": 2.0,
                   "maxErrorRateIncrease": 0.005, "maxLabelDisagreement": 0.1,
                   "minRequestsPerStep": 50},
    "failureLimit": 2, "progressDeadlineSeconds": 900, "manualGates": [50], "abort": False,
    "preTrafficAnalysis": True, "headerRoute": {"name": "x-model-cohort", "value": "canary"},
    "shadow": {"percent": 20.0, "minPairs": 300, "queue": 128, "timeoutSeconds": 1.5},
    "shadowPhase": True,
}


def _schema() -> dict[str, Any]:
    return _closed(_crd_schema(rollout_crd(), api.VERSION))


def _resource(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND,
            "metadata": {"name": "iris"}, "spec": spec}


def test_a_full_spec_round_trips_through_the_schema_and_the_parser() -> None:
    jsonschema.validate(_resource(FULL), _schema())
    parsed = api.parse_spec(FULL)
    assert parsed.to_resource() == FULL
    rollout = parsed.rollout(stable="1")
    assert (rollout.stable_version, rollout.canary_version) == ("1", "2")
    assert rollout.steps == (5, 25, 50, 100) and rollout.manual_gates == (50,)
    assert rollout.thresholds.min_requests == 50 and rollout.failure_limit == 2
    assert rollout.pre_traffic_analysis
    assert rollout.header_route == ("x-model-cohort", "canary")


def test_pre_traffic_analysis_is_on_unless_the_spec_turns_it_off() -> None:
    base = {"model": "iris", "version": "2", "steps": [10, 100]}
    assert api.parse_spec(base).rollout(stable="1").pre_traffic_analysis
    off = api.parse_spec({**base, "preTrafficAnalysis": False}).rollout(stable="1")
    assert not off.pre_traffic_analysis


def test_the_shadow_phase_runs_as_the_spec_says_unless_turned_off_for_one_rollout() -> None:
    from modelrail.rollout.core.spec import ShadowSpec
    base = {"model": "iris", "version": "2", "steps": [10, 100],
            "shadow": {"percent": 30, "minPairs": 150}}
    assert api.parse_spec(base).rollout(stable="1").shadow == ShadowSpec(30, 150)
    assert api.parse_spec({**base, "shadowPhase": False}).rollout(stable="1").shadow is None
    with pytest.raises(api.InvalidRolloutError, match=r"shadow\.percent"):
        api.parse_spec({**base, "shadow": {"percent": 0}})


def test_kube_start_refuses_the_local_only_flags_by_name() -> None:
    """With --kube the policy is the ModelRollout's spec: an override flag would be
    silently ignored, so it is refused before anything is sent to the cluster."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "modelrail", "rollout", "start", "--kube",
                          "--namespace", "x", "--model", "iris:2", "--steps", "10,100",
                          "--load-users", "4"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == ExitCode.INVALID_INPUT, run.stdout + run.stderr
    assert "--steps, --load-users cannot be used with --kube" in run.stderr, run.stderr
    assert "ModelRollout's spec" in run.stderr


def test_kube_start_refuses_a_version_whose_rollout_already_ended() -> None:
    """The operator rolls a version out once: starting it again would only return the old
    verdict at once (`--wait`), so `start --kube` says so instead."""
    from modelrail.cli.kube import ended_before, summary

    def obj(phase: str, canary: str, finished: bool = True) -> dict[str, Any]:
        return {"spec": {"model": "iris", "version": canary},
                "status": {"phase": phase, "stableVersion": "1", "canaryVersion": canary,
                           "rollout": {"finished": finished}}}

    assert ended_before(summary(obj("RolledBack", "2")), "2") == "RolledBack"
    assert ended_before(summary(obj("Aborted", "2")), "2") == "Aborted"
    assert ended_before(summary(obj("RolledBack", "2")), "3") is None
    assert ended_before(summary(obj("Shadowing", "2", finished=False)), "2") is None
    assert ended_before(summary(obj("Succeeded", "2")), "2") is None


def test_every_field_of_the_type_is_in_the_schema_and_nothing_else() -> None:
    props = _crd_schema(rollout_crd(), api.VERSION)["properties"]["spec"]["properties"]
    assert set(props) == set(FULL)
    assert set(props["thresholds"]["properties"]) == set(FULL["thresholds"])


def test_defaults_live_in_the_contract() -> None:
    parsed = api.parse_spec({"model": "iris", "version": "2", "steps": [10, 100]})
    assert parsed.step_seconds == 60 and parsed.thresholds.min_requests_per_step == 100
    assert parsed.progress_deadline_seconds == 600 and not parsed.abort


@pytest.mark.parametrize("change,field", [
    ({"steps": [0, 50]}, "steps.0"),
    ({"stepSeconds": 1}, "stepSeconds"),
    ({"thresholds": {"maxErrorRate": 2}}, "thresholds.maxErrorRate"),
    ({"promote": True}, "promote"),  # a field nothing reads is not in the contract
    ({"model": "Iris"}, "model"),
])
def test_what_the_schema_refuses_the_parser_refuses(change: dict[str, Any],
                                                     field: str) -> None:
    bad = {**FULL, **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_resource(bad), _schema())
    with pytest.raises(api.InvalidRolloutError, match=field.replace(".", r"\.")):
        api.parse_spec(bad)


def test_rules_beyond_the_schema_are_the_policys() -> None:
    with pytest.raises(api.InvalidRolloutError, match="strictly increasing"):
        api.parse_spec({**FULL, "steps": [50, 10]})
    with pytest.raises(api.InvalidRolloutError, match="manualGates"):
        api.parse_spec({**FULL, "manualGates": [30]})


def test_the_program_writes_specs_the_operator_parses() -> None:
    for stack in ("dev", "staging", "prod"):
        cfg = load_stack(stack, ROOT)
        for model in cfg.models:
            obj = model_rollout(cfg, model)
            jsonschema.validate(obj, _schema())
            parsed = api.parse_spec(obj["spec"])
            assert parsed.policy() == cfg.rollout


def test_each_terminal_phase_has_one_exit_code() -> None:
    assert set(api.PHASE_EXIT) == {p for p in Phase if p.terminal}
    assert api.PHASE_EXIT[Phase.SUCCEEDED] is ExitCode.OK
    assert len(set(api.PHASE_EXIT.values())) == len(api.PHASE_EXIT)
