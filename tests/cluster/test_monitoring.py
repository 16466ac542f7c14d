"""The cluster's monitoring (modelrail.cluster.monitoring), for real on the session's
cluster (conftest.py): `up` installed Prometheus in `monitoring` and metrics-server in
kube-system, and
- Prometheus' `kubernetes-pods` job scrapes an annotated pod in a restricted namespace
  (its port and path from the annotations), every series labelled with the pod's
  namespace while the labels the pod exports (`model`, `version`) survive, even beside a
  pod label of the same name; the operator's PromQL (rollout/metrics/prometheus.py) over
  them returns a number, from the host at the Service's ClusterIP;
- the metrics API has every node's usage, and an HPA on CPU over a Deployment gets a
  current utilization.

The fast tests check the manifests: restricted security contexts, the flags, the scrape
configuration, the APIService.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelrail.cluster import addons, monitoring, node, pki
from modelrail.cluster import config as c
from modelrail.cluster.api import Api
from modelrail.rollout.metrics.prometheus import PrometheusProvider, queries, shadow_queries
from modelrail.rollout.ports import MetricTrack
from tests.cluster.conftest import NODES

PROMETHEUS_IMAGE = "localhost/modelrail/prometheus:x"
METRICS_IMAGE = "localhost/modelrail/metrics-server:x"
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1034, "runAsGroup": 1034,
                  "seccompProfile": {"type": "RuntimeDefault"}}

# a stand-in for a model pod's /metrics: the serving counter, 5 more requests per scrape
METRICS_SERVER = """\
import http.server
import sys

count = 0

class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global count
        if self.path != "/custom/metrics":
            self.send_error(404)
            return
        count += 5
        body = ('# TYPE modelrail_requests_total counter\\n'
                'modelrail_requests_total{model="iris",version="1",protocol="rest",'
                'outcome="2xx"} %d\\n' % count).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), Metrics).serve_forever()
"""


def _objs(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def _prometheus() -> dict[tuple[str, str], dict[str, Any]]:
    return _objs(monitoring.prometheus_manifests(PROMETHEUS_IMAGE))


def _metrics_server() -> dict[tuple[str, str], dict[str, Any]]:
    return _objs(monitoring.metrics_server_manifests(METRICS_IMAGE, "PEM"))


def _assert_restricted(deployment: dict[str, Any]) -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 65534 and sc["runAsGroup"] == 65534
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == addons.restricted_security_context()
    assert container["imagePullPolicy"] == "Never"
    assert all(p["containerPort"] >= 1024 for p in container["ports"])
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if mount["mountPath"] in writable:
            assert "emptyDir" in volumes[mount["name"]], mount
    return dict(container)


# --- fast: the manifests --------------------------------------------------------------------

def test_prometheus_runs_restricted_with_its_flags() -> None:
    objs = _prometheus()
    ns = objs[("Namespace", c.MONITORING_NAMESPACE)]["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"
    dep = objs[("Deployment", "prometheus")]
    assert dep["metadata"]["namespace"] == c.MONITORING_NAMESPACE
    container = _assert_restricted(dep)
    assert container["args"] == [
        "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
        "--storage.tsdb.retention.time=2h", "--web.listen-address=:9090"]
    mounts = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert mounts == {"/prometheus"}  # the TSDB, on an emptyDir
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "web"}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "256Mi"}
    svc = objs[("Service", "prometheus")]["spec"]
    assert svc["clusterIP"] == c.PROMETHEUS_SERVICE_IP
    assert [(p["port"], p["targetPort"]) for p in svc["ports"]] == [(9090, "web")]
    rules = objs[("ClusterRole", monitoring.PROMETHEUS_ROLE)]["rules"]
    assert all(set(r["verbs"]) == {"get", "list", "watch"} for r in rules)
    assert {res for r in rules for res in r["resources"]} == {
        "pods", "endpoints", "services", "nodes", "endpointslices"}
    # the operator's address names this namespace, Service and port
    assert monitoring.prometheus_address() == "10.96.0.90:9090"


def test_the_scrape_config_keeps_namespace_model_and_version() -> None:
    cfg = monitoring.scrape_config()
    assert cfg["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    (job,) = cfg["scrape_configs"]
    assert job["job_name"] == "kubernetes-pods"
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    assert job["honor_labels"] is True  # the exported model, version, outcome win
    rules = job["relabel_configs"]
    keep = rules[0]
    assert keep["action"] == "keep" and keep["regex"] == "true"
    assert keep["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    targets = {r.get("target_label"): r for r in rules}
    assert targets["namespace"]["source_labels"] == ["__meta_kubernetes_namespace"]
    assert targets["pod"]["source_labels"] == ["__meta_kubernetes_pod_name"]
    assert targets["__metrics_path__"]["source_labels"] == [
        "__meta_kubernetes_pod_annotation_prometheus_io_path"]
    assert targets["__address__"]["source_labels"][1] == \
        "__meta_kubernetes_pod_annotation_prometheus_io_port"
    assert {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"} in rules
    # nothing drops or rewrites a label the operator selects on
    for rule in rules:
        assert rule["action"] != "labeldrop" and rule.get("target_label") not in (
            "model", "version")
    # the ConfigMap holds this configuration, and the pod template its hash (a changed
    # file rolls the pod)
    objs = _prometheus()
    text = objs[("ConfigMap", "prometheus")]["data"]["prometheus.yml"]
    assert text == monitoring.config_text()
    template = objs[("Deployment", "prometheus")]["spec"]["template"]["metadata"]
    assert template["annotations"]["modelrail.dev/config-sha256"] == \
        hashlib.sha256(text.encode()).hexdigest()[:16]


def test_the_operators_queries_select_what_the_scrape_config_keeps() -> None:
    q = queries(namespace="modelrail-dev", track=MetricTrack(model="iris", version="1"),
                window_seconds=30)
    assert q["requests"] == ('sum(increase(modelrail_requests_total{namespace="modelrail-dev",'
                             'model="iris",version="1",route!~"header|shadow"}[30s]))')
    header = queries(namespace="modelrail-dev", window_seconds=30,
                     track=MetricTrack(model="iris", version="2", route="header"))
    assert 'version="2",route="header"}' in header["requests"]
    mirrored = queries(namespace="modelrail-dev", window_seconds=30,
                       track=MetricTrack(model="iris", version="2", route="shadow"))
    assert 'version="2",route="shadow"}' in mirrored["requests"]
    # stable's mirror counters, by outcome, over the same window
    shadow = shadow_queries(namespace="modelrail-dev", window_seconds=30,
                            track=MetricTrack(model="iris", version="1"))
    assert shadow["outcomes"] == (
        'sum by (outcome) (increase(modelrail_shadow_requests_total{namespace="modelrail-dev",'
        'model="iris",version="1"}[30s]))')
    assert "modelrail_shadow_pairs_total" in shadow["pairs"]


def test_metrics_server_as_upstream_with_the_kubelets_ca() -> None:
    objs = _metrics_server()
    dep = objs[("Deployment", "metrics-server")]
    assert dep["metadata"]["namespace"] == "kube-system"
    container = _assert_restricted(dep)
    args = container["args"]
    for flag in ("--secure-port=10250", "--cert-dir=/tmp",
                 "--kubelet-preferred-address-types=InternalIP",
                 "--kubelet-use-node-status-port", "--metric-resolution=15s"):
        assert flag in args
    assert "--kubelet-insecure-tls" not in args
    ca_flag = next(a for a in args if a.startswith("--kubelet-certificate-authority="))
    ca_dir = str(Path(ca_flag.split("=", 1)[1]).parent)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == ca_dir)
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == mount["name"])
    cm = objs[("ConfigMap", volume["configMap"]["name"])]
    assert cm["data"] == {"ca.crt": "PEM"}
    assert {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")} \
        == {"/tmp"}
    svc = objs[("Service", "metrics-server")]["spec"]
    assert [(p["port"], p["targetPort"]) for p in svc["ports"]] == [(443, "https")]
    aps = objs[("APIService", "v1beta1.metrics.k8s.io")]["spec"]
    assert aps["service"] == {"name": "metrics-server", "namespace": "kube-system",
                              "port": 443}
    assert (aps["group"], aps["version"]) == ("metrics.k8s.io", "v1beta1")
    assert aps["insecureSkipTLSVerify"] is True
    reader = objs[("ClusterRole", "system:aggregated-metrics-reader")]
    assert reader["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    rules = objs[("ClusterRole", "system:metrics-server")]["rules"]
    assert {res for r in rules for res in r["resources"]} == {"nodes/metrics", "pods",
                                                              "nodes"}
    binding = objs[("RoleBinding", "metrics-server-auth-reader")]
    assert binding["metadata"]["namespace"] == "kube-system"
    assert binding["roleRef"]["name"] == "extension-apiserver-authentication-reader"
    delegator = objs[("ClusterRoleBinding", "metrics-server:system:auth-delegator")]
    assert delegator["roleRef"]["name"] == "system:auth-delegator"


def test_the_addons_prefer_the_node_coredns_runs_on() -> None:
    for dep in (_prometheus()[("Deployment", "prometheus")],
                _metrics_server()[("Deployment", "metrics-server")]):
        terms = dep["spec"]["template"]["spec"]["affinity"]["podAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"]
        assert terms[0]["podAffinityTerm"]["labelSelector"] == {
            "matchLabels": {"k8s-app": "kube-dns"}}
        assert terms[0]["weight"] > terms[1]["weight"]


# --- slow: the real monitoring ----------------------------------------------------------------

def _api(state_dir: Path) -> Api:
    return Api(pki.Pki(c.Layout(state_dir.resolve()).pki))


def _wait(check: Any, *, timeout: float, what: str, detail: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, KeyError, ValueError):
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}" +
                         (f": {detail()}" if detail is not None else ""))


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}


def _delete_namespace(api: Api, name: str) -> None:
    api.delete(f"/api/v1/namespaces/{name}", grace_seconds=0)
    _wait(lambda: api.get(f"/api/v1/namespaces/{name}") is None, timeout=120,
          what=f"namespace {name} deleted")


def _prom(path: str, **params: str) -> Any:
    r = httpx.get(f"{monitoring.prometheus_url()}{path}", params=params, timeout=5,
                  trust_env=False)
    r.raise_for_status()
    return r.json()["data"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_up_installs_prometheus_and_the_metrics_api(cluster: tuple[Path, Any, str]) -> None:
    state_dir, result, _ = cluster
    print(f"\nup: {result.timings}")
    assert "monitoring" in result.timings, result.problems
    assert result.prometheus == monitoring.prometheus_address() == "10.96.0.90:9090"
    assert node.status(state_dir).prometheus == result.prometheus
    assert not result.problems, result.problems
    assert monitoring.prometheus_ready()
    with _api(state_dir) as api:
        for ns, name in ((c.MONITORING_NAMESPACE, "prometheus"),
                         ("kube-system", "metrics-server")):
            pods = api.get(f"/api/v1/namespaces/{ns}/pods")
            assert pods is not None
            (pod,) = [p for p in pods["items"] if p["metadata"]["name"].startswith(name)
                      and p["status"].get("phase") == "Running"]
            assert pod["spec"]["securityContext"]["runAsUser"] == 65534
            assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        ns = api.get(f"/api/v1/namespaces/{c.MONITORING_NAMESPACE}")
        assert ns is not None
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_prometheus_scrapes_annotated_pods_with_namespace_model_and_version(
        cluster: tuple[Path, Any, str]) -> None:
    state_dir, _, image = cluster
    ns, pod_name = "mon-scrape", "model-stub"
    with _api(state_dir) as api:
        api.apply(_namespace(ns))
        try:
            api.apply({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "stub", "namespace": ns},
                       "data": {"server.py": METRICS_SERVER}})
            # a pod label named like an exported one: the exported value must win
            api.apply({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": pod_name, "namespace": ns,
                                    "labels": {"app": "model-stub", "version": "pod-label"},
                                    "annotations": {"prometheus.io/scrape": "true",
                                                    "prometheus.io/port": "8081",
                                                    "prometheus.io/path": "/custom/metrics"}},
                       "spec": {"securityContext": RESTRICTED_POD,
                                "terminationGracePeriodSeconds": 1,
                                "containers": [{
                                    "name": "stub", "image": image,
                                    "imagePullPolicy": "Never",
                                    "command": ["python3", "/app/server.py", "8081"],
                                    # a port besides the annotated one: one target still
                                    "ports": [{"name": "other", "containerPort": 8080}],
                                    "securityContext": RESTRICTED_CONTAINER,
                                    "volumeMounts": [{"name": "app", "mountPath": "/app",
                                                      "readOnly": True}]}],
                                "volumes": [{"name": "app",
                                             "configMap": {"name": "stub"}}]}})
            # an unannotated pod in the same namespace is not scraped
            api.apply({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "unannotated", "namespace": ns},
                       "spec": {"securityContext": RESTRICTED_POD,
                                "terminationGracePeriodSeconds": 1,
                                "containers": [{
                                    "name": "main", "image": image,
                                    "imagePullPolicy": "Never",
                                    "command": ["sleep", "infinity"],
                                    "securityContext": RESTRICTED_CONTAINER}]}})

            def target() -> Any:
                active = _prom("/api/v1/targets", state="active")["activeTargets"]
                ours = [t for t in active if t["labels"].get("namespace") == ns]
                return ours if ours and all(t["health"] == "up" for t in ours) else None
            (t,) = _wait(target, timeout=120, what=f"Prometheus' target in {ns} to be up",
                         detail=lambda: _prom("/api/v1/targets", state="active"))
            print(f"\ntarget: {t['scrapeUrl']} {t['labels']}")
            assert t["labels"]["job"] == "kubernetes-pods"
            assert t["labels"]["pod"] == pod_name
            assert t["labels"]["app"] == "model-stub"
            assert t["scrapeUrl"].endswith(":8081/custom/metrics")

            selector = f'modelrail_requests_total{{namespace="{ns}",model="iris",version="1"}}'
            (series,) = _wait(lambda: _prom("/api/v1/query", query=selector)["result"],
                              timeout=60, what=selector)
            labels = series["metric"]
            assert (labels["namespace"], labels["pod"], labels["model"], labels["version"],
                    labels["outcome"]) == (ns, pod_name, "iris", "1", "2xx")

            # the operator's own query, through its provider, from the host
            provider = PrometheusProvider(monitoring.prometheus_url(), namespace=ns)
            track = MetricTrack(model="iris", version="1")
            query = queries(namespace=ns, track=track, window_seconds=30)["requests"]
            value = _wait(lambda: (v := _prom("/api/v1/query", query=query)["result"])
                          and float(v[0]["value"][1]) > 0 and v, timeout=60, what=query)
            print(f"{query} = {value[0]['value'][1]}")
            sample = provider.sample(track=track, window_seconds=30)
            assert sample is not None and sample.requests > 0, sample
        finally:
            _delete_namespace(api, ns)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_metrics_api_serves_every_node_and_an_hpa_reads_cpu(
        cluster: tuple[Path, Any, str]) -> None:
    state_dir, _, image = cluster
    ns = "mon-hpa"
    labels = {"app": "busy"}
    with _api(state_dir) as api:
        usage = monitoring.node_usage(api)
        assert set(usage) == {c.node_name(i) for i in range(NODES)}, usage
        assert all(u["cpu"] and u["memory"] for u in usage.values()), usage
        api.apply(_namespace(ns))
        try:
            # a little CPU (a loop that mostly sleeps) against a 10m request
            busy = ("import time\nwhile True:\n    sum(range(20000))\n    time.sleep(0.02)\n")
            api.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "busy", "namespace": ns},
                       "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                                "template": {"metadata": {"labels": labels}, "spec": {
                                    "securityContext": RESTRICTED_POD,
                                    "terminationGracePeriodSeconds": 1,
                                    "containers": [{
                                        "name": "busy", "image": image,
                                        "imagePullPolicy": "Never",
                                        "command": ["python3", "-c", busy],
                                        "resources": {"requests": {"cpu": "10m"},
                                                      "limits": {"cpu": "100m"}},
                                        "securityContext": RESTRICTED_CONTAINER}]}}}})
            api.apply({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                       "metadata": {"name": "busy", "namespace": ns},
                       "spec": {"scaleTargetRef": {"apiVersion": "apps/v1",
                                                   "kind": "Deployment", "name": "busy"},
                                "minReplicas": 1, "maxReplicas": 1,
                                "metrics": [{"type": "Resource", "resource": {
                                    "name": "cpu", "target": {
                                        "type": "Utilization",
                                        "averageUtilization": 80}}}]}})
            hpa_path = (f"/apis/autoscaling/v2/namespaces/{ns}/"
                        "horizontalpodautoscalers/busy")

            def utilization() -> Any:
                hpa = api.get(hpa_path) or {}
                for m in hpa.get("status", {}).get("currentMetrics") or []:
                    if m.get("type") == "Resource" and m["resource"]["name"] == "cpu":
                        return m["resource"]["current"]
                return None
            current = _wait(utilization, timeout=120,
                            what="the HPA's current CPU utilization",
                            detail=lambda: (api.get(hpa_path) or {}).get("status"))
            print(f"\nHPA current CPU: {current}")
            assert "averageUtilization" in current and current["averageUtilization"] >= 0
            pods = api.get(f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods")
            assert pods is not None and pods["items"], pods
        finally:
            _delete_namespace(api, ns)
