"""A Kubernetes stand-in for operator tests: KMock's emulator (a stateful mock of the
Kubernetes API, recommended by kopf's documentation) in a thread, plus the controllers a
real cluster would run and this one has not:

  - Stamped: KMock stores objects as sent; real API servers stamp uid, resourceVersion,
    generation (bumped on spec changes), creationTimestamp and the namespace. Without them
    kopf handles objects twice and ownerReferences do not validate.
  - FakeKubelet: makes Deployments "ready" (status.readyReplicas and friends), except for
    versions told never to be ready; runs each Locust Job *for real* (the Job's own
    command, `python -m modelrail.rollout.load.job`, with the in-cluster Service URL mapped
    to a local server) and records its pod with the termination message, as a kubelet does.
  - FakePrometheus: answers /api/v1/query for the provider's PromQL from figures the test
    sets per version (there is no Prometheus binary here).

Every request is recorded with its user agent, so tests can tell the operator's calls
(user agent "modelrail-operator", or kopf's) from the harness's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import kmock
from kmock._internal import parsing as _parsing
from kubernetes import client

from modelrail.infra import manifests
from modelrail.rollout import api

VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
RESOURCES = {  # resource: (kind, namespaced, subresources)
    "v1/namespaces": ("Namespace", False, set()), "v1/events": ("Event", True, set()),
    "v1/pods": ("Pod", True, {"status"}), "v1/configmaps": ("ConfigMap", True, set()),
    "v1/services": ("Service", True, set()),
    "apps/v1/deployments": ("Deployment", True, {"status", "scale"}),
    "batch/v1/jobs": ("Job", True, {"status"}),
    "autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", True, {"status"}),
    "gateway.networking.k8s.io/v1/httproutes": ("HTTPRoute", True, {"status"}),
    "gateway.networking.k8s.io/v1/grpcroutes": ("GRPCRoute", True, {"status"}),
    f"{api.API_VERSION}/{api.PLURAL}": (api.KIND, True, {"status"}),
    "kopf.dev/v1/kopfpeerings": ("KopfPeering", True, set()),
}


def _parse_path(path: str) -> Any:
    """KMock 0.8 cannot parse the cluster-scoped `/api/v1/namespaces[/NAME]` (it takes
    "namespaces" for the namespace prefix); kopf lists it. Parse those two as a resource."""
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) <= 4:
        return _parsing.ParsedPath(group="", version="v1", plural="namespaces",
                                   name=parts[3] if len(parts) == 4 else None)
    return _original_parse_path(path)


_original_parse_path = _parsing.parse_path
_parsing.parse_path = _parse_path


@dataclass
class Call:
    agent: str
    method: str
    action: str
    group: str
    resource: str
    subresource: str | None
    body: Any


class Stamped(kmock.KubernetesEmulator):  # type: ignore[misc]
    """The emulator plus what a real API server stamps on objects."""

    calls: list[Call]

    async def _handle(self, request: Any) -> Any:
        res = request.resource
        if res is not None:
            self.calls.append(Call(
                agent=request.headers.get("User-Agent", ""), method=str(request.method),
                action=getattr(request.action, "value", str(request.action)),
                group=res.group or "", resource=res.plural or "",
                subresource=getattr(request, "subresource", None), body=request.data))
            if isinstance(request.data, dict):
                self._stamp(request)
        return await super()._handle(request)

    def _stamp(self, request: Any) -> None:
        meta = request.data.setdefault("metadata", {})
        self._rv = getattr(self, "_rv", 0) + 1
        if request.action == kmock.action.CREATE:
            if "name" not in meta and "generateName" in meta:  # kopf's Events use it
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()))
            meta["generation"] = 1
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
        elif request.action == kmock.action.UPDATE and "spec" in request.data:
            key = (request.resource, request.namespace, request.name)
            current = self.objects[key] if key in self.objects else None  # noqa: SIM401 (no .get)
            if current is not None and getattr(request, "subresource", None) is None:
                meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1
        meta["resourceVersion"] = str(self._rv)


@dataclass
class Cluster:
    url: str
    emulator: Stamped
    kubeconfig: Path
    namespace: str
    api: client.ApiClient

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def _path(self, group: str, version: str, plural: str) -> str:
        base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        return f"{self.url}{base}/namespaces/{self.namespace}/{plural}"

    def get(self, group: str, version: str, plural: str, name: str) -> dict[str, Any] | None:
        """An object as stored (None if absent or deleted), read over the API."""
        r = httpx.get(f"{self._path(group, version, plural)}/{name}", timeout=10)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def list(self, group: str, version: str, plural: str) -> list[dict[str, Any]]:
        r = httpx.get(self._path(group, version, plural), timeout=10)
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return list(r.json().get("items", []))

    def create(self, obj: dict[str, Any]) -> None:
        group, _, version = obj["apiVersion"].rpartition("/")
        plural = {"Deployment": "deployments", "HTTPRoute": "httproutes",
                  "GRPCRoute": "grpcroutes", api.KIND: api.PLURAL,
                  "ConfigMap": "configmaps", "Service": "services",
                  "Pod": "pods", "KopfPeering": "kopfpeerings"}[obj["kind"]]
        r = httpx.post(self._path(group, version, plural), json=obj, timeout=10,
                       headers={"User-Agent": "test-harness"})
        r.raise_for_status()

    def operator_calls(self) -> list[Call]:
        return [c for c in self.emulator.calls
                if c.agent.startswith(("modelrail-operator", "kopf"))]


@contextmanager
def kmock_cluster(namespace: str) -> Iterator[Cluster]:
    ready = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()

        async def main() -> None:
            emulator = Stamped()
            emulator.calls = []
            async with emulator, kmock.Server(emulator) as server:
                for r, (kind, namespaced, subs) in RESOURCES.items():
                    emulator.resources[r] = kmock.ResourceInfo(
                        kind=kind, namespaced=namespaced, verbs=VERBS, subresources=subs)
                # kopf watches nothing unless the namespace exists (KMock cannot create
                # cluster-scoped namespaces over its API, so it is stored directly)
                emulator.objects[kmock.resource("v1/namespaces"), None, namespace] = {
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": namespace, "uid": str(uuid.uuid4()),
                                 "resourceVersion": "1"}}
                box.update(emulator=emulator, url=str(server.url).rstrip("/"),
                           stop=asyncio.Event(), loop=loop)
                ready.set()
                await box["stop"].wait()

        loop.run_until_complete(main())

    thread = threading.Thread(target=serve, daemon=True, name="kmock")
    thread.start()
    assert ready.wait(20), "KMock did not start"
    tmp = Path(tempfile.mkdtemp(prefix="modelrail-kube-"))
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": box["url"]}}],
        "users": [{"name": "kmock", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock",
                                                   "namespace": namespace}}]}))
    cfg = client.Configuration()
    cfg.host = box["url"]
    api = client.ApiClient(cfg)
    api.user_agent = "test-harness"
    try:
        yield Cluster(url=box["url"], emulator=box["emulator"], kubeconfig=kubeconfig,
                      namespace=namespace, api=api)
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class FakeKubelet:
    """Deployment readiness and Job execution, as the cluster's controllers would do."""

    cluster: Cluster
    server_url: str  # where every in-cluster model Service is really served
    never_ready: set[str] = field(default_factory=set)  # model versions that never get ready
    ready_cap: dict[str, int] = field(default_factory=dict)  # Deployment → most ready pods
    jobs_run: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        cfg = client.Configuration()
        cfg.host = self.cluster.url
        self.api = client.ApiClient(cfg)
        self.api.user_agent = "fake-kubelet"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="kubelet")

    def __enter__(self) -> FakeKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._deployments()
                self._jobs()
            except client.exceptions.ApiException:
                continue

    def _deployments(self) -> None:
        apps = client.AppsV1Api(self.api)
        ns = self.cluster.namespace
        for d in apps.list_namespaced_deployment(ns).items:
            version = (d.metadata.labels or {}).get(manifests.VERSION_LABEL)
            replicas = d.spec.replicas or 1
            gen = d.metadata.generation or 1
            ready = 0 if version in self.never_ready and d.metadata.name.endswith(
                "-canary") else min(replicas, self.ready_cap.get(d.metadata.name, replicas))
            st = d.status
            if st is None or (st.observed_generation, st.ready_replicas,
                              st.updated_replicas) != (gen, ready, replicas):
                apps.patch_namespaced_deployment_status(d.metadata.name, ns, {"status": {
                    "observedGeneration": gen, "replicas": replicas,
                    "updatedReplicas": replicas, "readyReplicas": ready,
                    "availableReplicas": ready}})

    def _jobs(self) -> None:
        batch = client.BatchV1Api(self.api)
        ns = self.cluster.namespace
        for job in batch.list_namespaced_job(ns).items:
            name = job.metadata.name
            if name in self.jobs_run:
                continue
            self.jobs_run.append(name)
            container = job.spec.template.spec.containers[0]
            argv = list(container.args)
            target = argv[argv.index("--target") + 1]
            argv[argv.index("--target") + 1] = re.sub(r"^http://[^/]+", self.server_url,
                                                      target)
            env = {e.name: e.value for e in container.env or []}
            with tempfile.TemporaryDirectory() as tmp:
                result = Path(tmp) / "termination-log"
                proc = subprocess.run([sys.executable, *argv[1:], "--result", str(result)],
                                      env={**os.environ, **env}, capture_output=True,
                                      text=True, timeout=120, check=False)
                message = result.read_text() if result.exists() else proc.stderr[-500:]
            client.CoreV1Api(self.api).create_namespaced_pod(ns, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{name}-pod", "namespace": ns,
                             "labels": {"job-name": name}},
                "spec": {"containers": [{"name": "locust", "image": container.image}]},
                "status": {"phase": "Succeeded" if proc.returncode == 0 else "Failed",
                           "containerStatuses": [{
                               "name": "locust", "ready": False, "restartCount": 0,
                               "image": container.image, "imageID": "", "state": {
                                   "terminated": {"exitCode": proc.returncode,
                                                  "message": message}}}]}})
            key = "succeeded" if proc.returncode == 0 else "failed"
            batch.patch_namespaced_job_status(name, ns, {"status": {key: 1}})


class FakePrometheus:
    """/api/v1/query for PrometheusProvider's queries, from per-version figures."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, float]] = {}
        self.queries: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query).get("query", [""])[0]
                outer.queries.append(query)
                m = re.search(r'version="([^"]+)"', query)
                fig = outer.figures.get(m.group(1) if m else "", {})
                key = ("p99_seconds" if query.startswith("histogram_quantile") else
                       "errors" if "outcome=~" in query else "requests")
                value = fig.get(key)
                result = [] if value is None else [{"metric": {},
                                                    "value": [time.time(), str(value)]}]
                body = json.dumps({"status": "success",
                                   "data": {"resultType": "vector", "result": result}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
