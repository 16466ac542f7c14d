"""Fixtures for operator tests: a KMock cluster seeded as `pulumi up` leaves a namespace
(stable Deployment, routes, ModelRollout, the validation-sample ConfigMap), a fake kubelet,
a fake Prometheus, and the operator itself (kopf, in-process, against KMock)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from modelrail.infra import manifests
from modelrail.infra.config import ModelSpec, StackConfig, load_stack
from tests.conftest import Example, Server
from tests.infra.harness import ROOT
from tests.rollout.kube.harness import Cluster, FakeKubelet, FakePrometheus, kmock_cluster

os.environ.setdefault("MODELRAIL_RECONCILE_SECONDS", "0.5")
logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # KMock logs every request
NS = "modelrail-dev"
GOOD = {"requests": 400, "errors": 0, "p99_seconds": 0.004}


def stack() -> StackConfig:
    cfg = load_stack("dev", ROOT)
    rollout = cfg.rollout.model_copy(update={
        "steps": [50, 100], "step_seconds": 5, "analysis_interval_seconds": 1,
        "min_requests_per_step": 50, "failure_limit": 1, "progress_deadline_seconds": 30,
        "max_p99_latency_ms": 100, "max_latency_ratio": 5.0})
    return cfg.model_copy(update={"rollout": rollout,
                                  "models": [ModelSpec(name="iris", version="1")]})


@pytest.fixture()
def prometheus() -> Iterator[FakePrometheus]:
    prom = FakePrometheus()
    prom.figures = {"1": dict(GOOD), "2": dict(GOOD), "3": dict(GOOD)}
    yield prom
    prom.close()


def operator_env(cluster: Cluster, prometheus: FakePrometheus, server: Server,
                 cfg: StackConfig) -> dict[str, str]:
    """The operator's configuration for this cluster (see modelrail.rollout.kube.operator)."""
    return {"KUBECONFIG": str(cluster.kubeconfig),
            "MODELRAIL_STACK_CONFIG": cfg.model_dump_json(by_alias=True),
            "MODELRAIL_PROMETHEUS_URL": prometheus.url,
            "MODELRAIL_SERVICE_URL": server.http_url, "MODELRAIL_LOAD_SECONDS": "1",
            "MODELRAIL_LOAD_USERS": "2"}


@contextmanager
def operator(cluster: Cluster, prometheus: FakePrometheus, server: Server,
             cfg: StackConfig) -> Iterator[Any]:
    from kopf.testing import KopfRunner

    env = operator_env(cluster, prometheus, server, cfg)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with KopfRunner(["run", "--peering", manifests.PEERING, "--namespace", NS,
                         "-m", "modelrail.rollout.kube.operator"]) as runner:
            yield runner
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


Env = dict[str, Any]


@pytest.fixture()
def kube(examples: dict[str, Example], server: Server, prometheus: FakePrometheus,
         ) -> Iterator[Callable[..., Any]]:
    """kube(never_ready=…) → (cluster, kubelet, start_operator) with the namespace seeded."""
    cfg = stack()
    stacks = []

    @contextmanager
    def make(never_ready: set[str] | None = None) -> Iterator[tuple[Cluster, FakeKubelet]]:
        with kmock_cluster(NS) as cluster, FakeKubelet(
                cluster, server.http_url, never_ready=set(never_ready or ())) as kubelet:
            model = cfg.models[0]
            for obj in (manifests.kopf_peering(cfg), manifests.model_deployment(cfg, model),
                        manifests.http_route(cfg, model.name),
                        manifests.grpc_route(cfg, model.name),
                        manifests.model_rollout(cfg, model)):
                cluster.create(obj)
            rows = examples["iris:1"].split.X_test.tolist()
            cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "iris-validation", "namespace": NS},
                            "data": {"rows.json": json.dumps(rows)}})
            stacks.append(cluster)
            yield cluster, kubelet

    yield make
