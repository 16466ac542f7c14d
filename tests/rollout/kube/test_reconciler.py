"""The reconciler (kube/reconciler.py) called directly against KMock — no kopf, no Locust —
for what must never be silent: each cause that keeps a rollout from going on is told as a
Warning Event (once) and a status message or condition naming it.

  - a stable Deployment without its version label: Blocked, naming the Deployment;
  - an invalid spec: InvalidSpec, and nothing else is touched;
  - no metrics provider: condition MetricsAvailable=False and a NoMetricsProvider Warning;
  - no validation sample: condition ValidationSampleAvailable=False ("the model gate cannot
    pass"), no load Job, and the analysis never passes;
  - the model's task unknown (the stable Service does not answer its OIP metadata): the
    model gate holds with condition ModelTaskKnown=False, never a guessed task.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from modelrail.infra import manifests
from modelrail.rollout import api
from modelrail.rollout.core.analysis import LoadSample, TrafficSample
from modelrail.rollout.core.controller import ControllerSettings
from modelrail.rollout.kube.gate import ServiceModelGate
from modelrail.rollout.kube.load import JobLoadRunner
from modelrail.rollout.kube.platform import KubePlatform
from modelrail.rollout.kube.reconciler import Reconciler
from modelrail.rollout.kube.status import (
    METRICS_AVAILABLE,
    MODEL_TASK_KNOWN,
    VALIDATION_SAMPLE,
)
from modelrail.rollout.ports import LoadRunner, LoadTarget, MetricProvider
from modelrail.rollout.routers.gateway_api import GatewayAPIRouter
from tests.rollout.core.fakes import StaticProvider
from tests.rollout.kube.conftest import NS, stack
from tests.rollout.kube.harness import Cluster, FakeKubelet, kmock_cluster

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
HEALTHY = TrafficSample(requests=400, errors=0, p99_ms=4.0)
Events = list[tuple[str, str, str]]


class InstantLoad:
    """A load run that is over as soon as it is asked about."""

    def start(self, *, target: LoadTarget) -> str:
        return "run"

    def result(self, *, handle: str) -> LoadSample | None:
        return LoadSample(requests=300, failures=0)

    def cancel(self, *, handle: str) -> None:
        pass


@contextmanager
def metadata_server(outputs: list[str]) -> Iterator[str]:
    """Answers OIP model metadata (GET /v2/models/<model>) with these outputs; nothing
    else (the gate's comparisons are not reached in these tests)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"name": "iris", "platform": "onnx",
                               "outputs": [{"name": n} for n in outputs]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@contextmanager
def namespace(*, sample: bool = True, label: bool = True,
              stable: bool = True) -> Iterator[Cluster]:
    """A KMock namespace as `pulumi up` leaves it, with a kubelet marking pods ready."""
    cfg = stack()
    with kmock_cluster(NS) as cluster, FakeKubelet(cluster, "http://127.0.0.1:9"):
        model = cfg.models[0]
        deployment = manifests.model_deployment(cfg, model)
        if not label:
            del deployment["metadata"]["labels"][manifests.VERSION_LABEL]
        for obj in ([deployment] if stable else []) + [
                manifests.http_route(cfg, model.name), manifests.grpc_route(cfg, model.name),
                manifests.model_rollout(cfg, model)]:
            cluster.create(obj)
        if sample:
            cluster.create({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": "iris-validation", "namespace": NS},
                            "data": {"rows.json": json.dumps(ROWS)}})
        yield cluster


def reconciler(cluster: Cluster, *, service_url: str, metrics: MetricProvider | None,
               load: LoadRunner | None = None,
               clock: Callable[[], float] = time.time) -> Reconciler:
    conf = client.Configuration()
    conf.host = cluster.url
    api_client = client.ApiClient(conf)
    api_client.user_agent = "modelrail-operator"
    platform = KubePlatform(api_client, stack(), service_url=service_url)
    return Reconciler(platform=platform, router=GatewayAPIRouter(platform.objects),
                      metrics=metrics, gate=ServiceModelGate(platform),
                      load=load or JobLoadRunner(platform),
                      settings=ControllerSettings(load_seconds=1, grpc_load=False),
                      clock=clock)


def start(cluster: Cluster, version: str) -> None:
    cluster.custom.patch_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.PLURAL,
                                                  "iris", {"spec": {"version": version}})


def status(cluster: Cluster) -> dict[str, Any]:
    obj = cluster.get(api.GROUP, api.VERSION, api.PLURAL, "iris")
    assert obj is not None
    return dict(obj.get("status") or {})


def run(rec: Reconciler, cluster: Cluster, until: Callable[[dict[str, Any]], bool],
        timeout: float = 20) -> Events:
    """Reconcile (as the operator's timer would) until `until(status)`; every Event."""
    events: Events = []
    deadline = time.monotonic() + timeout
    while not until(status(cluster)):
        assert time.monotonic() < deadline, f"never reached: {status(cluster)}"
        events += rec.reconcile({"metadata": {"name": "iris"}})
        time.sleep(0.1)
    return events


def condition(st: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in st.get("conditions") or [] if c["type"] == kind), None)


pytestmark = pytest.mark.slow


def test_a_deployment_without_its_version_label_blocks_and_names_it() -> None:
    with namespace(label=False) as cluster:
        rec = reconciler(cluster, service_url=closed_port_url(), metrics=None)
        start(cluster, "2")
        events = rec.reconcile({"metadata": {"name": "iris"}})
        assert [(k, r) for k, r, _ in events] == [("Warning", "Blocked")], events
        assert (f"Deployment {NS}/iris-stable has no {manifests.VERSION_LABEL} label"
                in events[0][2])
        assert "model-version label" in status(cluster)["message"]
        assert rec.reconcile({"metadata": {"name": "iris"}}) == []  # told once
        assert cluster.get("apps", "v1", "deployments", "iris-canary") is None


def test_no_stable_deployment_is_told_once() -> None:
    with namespace(stable=False) as cluster:
        rec = reconciler(cluster, service_url=closed_port_url(), metrics=None)
        start(cluster, "2")
        events = rec.reconcile({"metadata": {"name": "iris"}})
        assert [(k, r) for k, r, _ in events] == [("Warning", "NoStable")]
        assert "iris-stable" in status(cluster)["message"]
        assert rec.reconcile({"metadata": {"name": "iris"}}) == []
        assert cluster.get("apps", "v1", "deployments", "iris-canary") is None


def test_a_rollout_restarted_back_to_the_stable_version_ends_clean() -> None:
    with metadata_server(["label"]) as url, namespace() as cluster:
        rec = reconciler(cluster, service_url=url, metrics=None, load=InstantLoad())
        start(cluster, "2")
        run(rec, cluster, lambda st: st.get("canaryVersion") == "2")
        assert cluster.get("apps", "v1", "deployments", "iris-canary") is not None
        start(cluster, "1")  # changed mind: stay on stable
        events = run(rec, cluster, lambda st: "rollout" not in st)
        assert [r for _, r, _ in events] == ["Restarted"]
        st = status(cluster)
        assert (st["phase"], st["stableVersion"], st["message"]) == (
            "Succeeded", "1", "iris:1 is stable")
        assert cluster.get("apps", "v1", "deployments", "iris-canary") is None
        assert rec.reconcile({"metadata": {"name": "iris"}}) == []


def test_an_invalid_spec_is_told_and_nothing_else_happens() -> None:
    with namespace() as cluster:
        rec = reconciler(cluster, service_url=closed_port_url(), metrics=None)
        cluster.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, NS, api.PLURAL, "iris",
            {"spec": {"version": "2", "steps": [50, 10]}})
        before = len(cluster.operator_calls())
        events = rec.reconcile({"metadata": {"name": "iris"}})
        assert [(k, r) for k, r, _ in events] == [("Warning", "InvalidSpec")]
        assert "strictly increasing" in events[0][2]
        st = status(cluster)
        assert st["message"].startswith("invalid spec") and "rollout" not in st
        writes = [c for c in cluster.operator_calls()[before:] if c.action != "FETCH"]
        assert [(c.resource, c.subresource) for c in writes] == [(api.PLURAL, "status")]


def test_no_metrics_provider_is_said_not_silent() -> None:
    with metadata_server(["label", "probabilities"]) as url, namespace() as cluster:
        rec = reconciler(cluster, service_url=url, metrics=None, load=InstantLoad())
        start(cluster, "2")
        events = run(rec, cluster, lambda st: st.get("canaryVersion") == "2")
        events += rec.reconcile({"metadata": {"name": "iris"}})
        warnings = [(r, m) for k, r, m in events if k == "Warning"]
        assert [r for r, _ in warnings] == ["NoMetricsProvider"], events  # told once
        assert "MODELRAIL_PROMETHEUS_URL" in warnings[0][1]
        c = condition(status(cluster), METRICS_AVAILABLE)
        assert c is not None and c["status"] == "False" and c["reason"] == "NoMetricsProvider"


def test_no_validation_sample_holds_then_fails_at_the_deadline() -> None:
    """No sample: nothing to send and nothing to compare — no data, never success. The
    rollout holds (saying why) and fails at its progress deadline with traffic on stable."""
    now = [1_000_000.0]

    def clock() -> float:  # every reconcile is 20 s later: the 600 s deadline comes soon
        now[0] += 20.0
        return now[0]

    with metadata_server(["label", "probabilities"]) as url, \
            namespace(sample=False) as cluster:
        rec = reconciler(cluster, service_url=url, clock=clock,
                         metrics=StaticProvider({"1": HEALTHY, "2": HEALTHY}))
        start(cluster, "2")
        events = run(rec, cluster, lambda st: st.get("phase") == "Failed"
                     and bool((st.get("rollout") or {}).get("finished")), timeout=60)
        st = status(cluster)
        c = condition(st, VALIDATION_SAMPLE)
        assert c is not None and c["status"] == "False" and c["reason"] == "NoValidationSample"
        assert "the model gate cannot pass" in c["message"] and "iris-validation" in c["message"]
        reasons = [r for _, r, _ in events]
        assert reasons[0] == "Started" and reasons.count("NoValidationSample") == 1, events
        assert "deadline" in st["message"] and "no validation sample" in st["message"], st
        assert st["lastAnalysis"]["status"] == "INCONCLUSIVE"
        assert not [c for c in st["rollout"]["status"]["history"]
                    if c["action"] == "set_weight"]  # never took traffic
        assert cluster.list("batch", "v1", "jobs") == []  # nothing to send: no Job


def test_an_unknown_model_task_holds_the_gate_and_says_why() -> None:
    with namespace() as cluster:
        rec = reconciler(cluster, service_url=closed_port_url(),
                         metrics=StaticProvider({"1": HEALTHY, "2": HEALTHY}),
                         load=InstantLoad())
        start(cluster, "2")
        events = run(rec, cluster, lambda st: condition(st, MODEL_TASK_KNOWN) is not None)
        for _ in range(3):
            events += rec.reconcile({"metadata": {"name": "iris"}})
        st = status(cluster)
        assert st["phase"] == "Initializing", st  # held before any traffic, not guessed
        c = condition(st, MODEL_TASK_KNOWN)
        assert c is not None and c["status"] == "False" and c["reason"] == "ModelTaskUnknown"
        assert "/v2/models/iris" in c["message"] and "never guessed" in c["message"]
        assert [r for k, r, _ in events if k == "Warning"].count("ModelTaskUnknown") == 1
        assert "model gate: INCONCLUSIVE" in st["lastAnalysis"]["summary"]
