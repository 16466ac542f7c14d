"""End to end on the local platform, real processes and real load: the local runner
(the rollout controller over the local backends, built from the rollout's files) with
live-traffic analysis only (no pre-traffic phase), the platform supervised in the
background as the daemon does: each kind of bad canary is rolled back automatically at its
first analysed interval, with traffic back on stable and the canary's instance stopped. (A
good canary promoted with zero failed requests: tests/rollout/local/test_env_cli.py,
through the CLI.)"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from modelrail.models.registry import Registry
from modelrail.rollout.core.spec import Phase, RolloutSpec, RolloutStatus, Thresholds
from modelrail.rollout.load.client import ClientTraffic
from modelrail.rollout.local.platform import LocalEnvironment
from modelrail.rollout.local.runner import open_rollout
from modelrail.rollout.local.store import RolloutFiles, read_jsonl, write_json
from modelrail.serving.config import ModelRef
from tests.conftest import Example

pytestmark = pytest.mark.slow
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [5.1, 3.5, 1.4, 0.2]}]}
THRESHOLDS = Thresholds(max_error_rate=0.01, max_p99_latency_ms=250, max_latency_ratio=5.0,
                        max_error_rate_increase=0.01, max_label_disagreement=0.1,
                        min_requests=30)
SPEC = RolloutSpec(model="iris", stable_version="1", canary_version="2", steps=(50, 100),
                   step_seconds=4, thresholds=THRESHOLDS, failure_limit=1,
                   progress_deadline_seconds=120)


@contextmanager
def supervised(env: LocalEnvironment) -> Iterator[None]:
    """supervise() in the background, as the environment's daemon does in its loop."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.5):
            env.supervise()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def run(examples: dict[str, Example], tmp_path: Path, faults: dict[str, object] | None,
        spec: RolloutSpec = SPEC,
        ) -> tuple[RolloutStatus, Counter[object], list[dict[str, Any]], LocalEnvironment]:
    env = LocalEnvironment(name="dev", run_dir=tmp_path / "env",
                           extra_env={"MODELRAIL_FAULTS": json.dumps(faults or {})})
    env.start()
    files = RolloutFiles(tmp_path / "rollouts" / "20250101T000000-iris-2")
    files.dir.mkdir(parents=True)
    write_json(files.request, {"id": files.id, "env": "dev", "spec": spec.to_dict(),
                               "task": "classification"})
    write_json(files.sample, {"rows": examples["iris:1"].split.X_test.tolist()})
    audit = tmp_path / "audit.jsonl"
    try:
        env.scale("iris", "stable", ref=ModelRef("iris", "1"), replicas=1)
        env.router.set_weight(route="iris", canary_weight=0)
        env.router.wait_applied(route="iris")
        traffic = ClientTraffic(f"http://127.0.0.1:{env.router.http_port}/v2/models/iris/"
                                "infer", BODY, pause=0.01, max_seconds=240).start()
        runner = open_rollout(files, env=env, registry=Registry(), audit_path=audit)
        with supervised(env):
            status = runner.run()
        results = traffic.stop()
        assert files.rollout_status() == status  # persisted as it ended
        assert files.summary()["done"]  # and cleaned up
        return status, results, read_jsonl(audit), env
    finally:
        env.stop()


def first_rollback(audit: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in audit if e["action"] == "rollback")


def test_erroring_canary_is_rolled_back(examples: dict[str, Example], tmp_path: Path) -> None:
    status, results, audit, env = run(examples, tmp_path, {"iris:2": {"error_rate": 0.3}})
    assert status.phase is Phase.ROLLED_BACK, status.message
    rollback = first_rollback(audit)
    assert any(c["decisive"] for c in rollback["checks"])
    assert "errors: FAIL" in rollback["verdict"]
    assert env.track("iris", "stable").ref == ModelRef("iris", "1")
    assert env.track("iris", "canary").instances == []
    failed = sum(v for k, v in results.items() if k != 200)
    assert failed / sum(results.values()) < 0.2  # bounded blast radius at the 50% step


@pytest.fixture(scope="module")
def wrong_model(examples: dict[str, Example], registry_dir: Path) -> str:
    """A candidate that is fast and error-free but wrong: trained on shuffled labels."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from modelrail.models.register import register_estimator
    from modelrail.models.registry import Registry

    ex = examples["iris:1"]
    wrong = LogisticRegression(max_iter=1000).fit(
        ex.split.X_train, np.random.default_rng(1).permutation(ex.split.y_train))
    register_estimator(estimator=wrong, split=ex.split, name="iris", version="98-shuffled",
                       registry=Registry(registry_dir), source_sha256="test")
    return "98-shuffled"


@pytest.mark.parametrize("kind", ["slow", "wrong", "never-ready"])
def test_each_kind_of_bad_canary_is_rolled_back(kind: str, examples: dict[str, Example],
                                                wrong_model: str, tmp_path: Path) -> None:
    spec, faults = SPEC, None
    if kind == "slow":
        faults = {"iris:2": {"latency_ms": 400}}  # p99 over the 250 ms limit
    elif kind == "wrong":
        spec = replace(SPEC, canary_version=wrong_model)
    else:
        faults = {"iris:2": {"never_ready": True}}
        spec = replace(SPEC, progress_deadline_seconds=15)
    status, results, audit, env = run(examples, tmp_path, faults, spec)
    expected = Phase.FAILED if kind == "never-ready" else Phase.ROLLED_BACK
    assert status.phase is expected, status.message
    assert env.track("iris", "stable").ref == ModelRef("iris", "1")
    assert env.track("iris", "canary").instances == []
    reason = {"slow": "latency: FAIL", "wrong": "model gate: FAIL",
              "never-ready": "never became ready"}[kind]
    assert reason in status.history[-1]["message"] or any(
        reason in (h["message"] or "") for h in status.history), status.history
    if kind == "never-ready":  # it never took traffic, so nobody noticed it
        assert set(results) == {200}
        assert audit[-1]["action"] == "rollback"
    else:  # stopped at the first analysed interval, with a decisive verdict
        assert any(c["decisive"] for c in first_rollback(audit)["checks"])
