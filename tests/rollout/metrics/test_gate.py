"""The model gate against real servers: identical models agree; a model trained on
shuffled labels (fast, error-free, wrong) is caught; an unreachable side is no data; a task
it does not know is refused."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelrail.models.register import register_estimator
from modelrail.models.registry import Registry
from modelrail.processes import stop
from modelrail.rollout.core.analysis import Status, analyse
from modelrail.rollout.metrics.gate import ModelGateProvider
from modelrail.rollout.ports import GateEndpoint
from tests.conftest import Example, Server, start_server
from tests.rollout.core.test_engine import GOOD, SPEC

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gate_server(examples: dict[str, Example], registry_dir: object,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    ex = examples["iris:1"]
    wrong = LogisticRegression(max_iter=1000).fit(
        ex.split.X_train, np.random.default_rng(0).permutation(ex.split.y_train))
    register_estimator(estimator=wrong, split=ex.split, name="iris", version="99-wrong",
                       registry=Registry(registry_dir), source_sha256="test")  # type: ignore[arg-type]
    srv = start_server(["iris:1", "iris:2", "iris:99-wrong", "diabetes:1", "diabetes:2"],
                       tmp_path_factory.mktemp("gate"))
    yield srv
    stop(srv.proc)


def test_same_answers_pass_and_wrong_model_fails(gate_server: Server,
                                                 examples: dict[str, Example]) -> None:
    rows = examples["iris:1"].split.X_test
    gate = ModelGateProvider(rows, task="classification", batch=16)
    same = gate.compare(stable=GateEndpoint(gate_server.http_url, "iris", "1"),
                        canary=GateEndpoint(gate_server.http_url, "iris", "1"))
    assert same is not None and same.compared == len(rows) and same.disagreements == 0
    assert same.distance == 0.0
    v2 = gate.compare(stable=GateEndpoint(gate_server.http_url, "iris", "1"),
                      canary=GateEndpoint(gate_server.http_url, "iris", "2"))
    assert v2 is not None and v2.disagreements <= 2  # a better model, nearly the same labels
    wrong = gate.compare(stable=GateEndpoint(gate_server.http_url, "iris", "1"),
                         canary=GateEndpoint(gate_server.http_url, "iris", "99-wrong"))
    assert wrong is not None and wrong.disagreements > len(rows) // 3
    verdict = analyse(SPEC, GOOD.__class__(canary=GOOD.canary, stable=GOOD.stable,
                                           gate=wrong, load=GOOD.load))
    assert verdict.status is Status.FAIL and verdict.decisive


def test_regression_gate(gate_server: Server, examples: dict[str, Example]) -> None:
    rows = examples["diabetes:1"].split.X_test
    gate = ModelGateProvider(rows, task="regression", tolerance=0.05)
    same = gate.compare(stable=GateEndpoint(gate_server.http_url, "diabetes", "1"),
                        canary=GateEndpoint(gate_server.http_url, "diabetes", "1"))
    assert same is not None and same.disagreements == 0
    other = gate.compare(stable=GateEndpoint(gate_server.http_url, "diabetes", "1"),
                         canary=GateEndpoint(gate_server.http_url, "diabetes", "2"))
    assert other is not None and other.disagreements > 0  # another estimator differs


def test_unreachable_side_is_no_data(gate_server: Server, examples: dict[str, Example]) -> None:
    gate = ModelGateProvider(examples["iris:1"].split.X_test, task="classification")
    assert gate.compare(stable=GateEndpoint(gate_server.http_url, "iris", "1"),
                        canary=GateEndpoint("http://127.0.0.1:1", "iris", "2")) is None
    assert gate.compare(stable=GateEndpoint(gate_server.http_url, "iris", "1"),
                        canary=GateEndpoint(gate_server.http_url, "iris", "7")) is None


def test_an_unknown_task_is_refused(examples: dict[str, Example]) -> None:
    with pytest.raises(ValueError, match="unknown model task 'clustering'"):
        ModelGateProvider(examples["iris:1"].split.X_test, task="clustering")
