"""The cluster's monitoring: Prometheus, which the operator's PrometheusProvider queries
(the serving metrics of every model pod), and metrics-server, which the HPAs read CPU
utilization from. Pure manifest builders, and `install`, which applies them and waits.

- Prometheus, in `monitoring` (the namespace the stacks name as
  `modelrail:monitoringNamespace`; the `restricted` Pod Security level is enforced on it):
  the image made of the upstream-built binary (images.py), UID 65534, read-only root, its
  TSDB on an emptyDir at /prometheus (2 h of retention), prometheus.yml from a ConfigMap
  (the pod template carries the file's hash, so a changed file rolls the pod). One scrape
  job, `kubernetes-pods` (kubernetes_sd, role pod), every 5 s: the pods annotated
  `prometheus.io/scrape: "true"`, at the port and path of their `prometheus.io/port` and
  `prometheus.io/path` annotations, each series labelled with its `namespace`, `pod` and
  the pod's labels. `honor_labels`: the labels a pod exports (`model`, `version`,
  `outcome` of modelrail_requests_total) win over any target label of the same name, so
  the operator's `sum(increase(modelrail_requests_total{namespace=…,model=…,version=…}
  [30s]))` finds them. Its ClusterRole is what the pod role's discovery reads. The
  Service `prometheus` has a fixed ClusterIP, 10.96.0.90:9090
  (http://prometheus.monitoring.svc:9090 in the cluster, that address from the host).
- metrics-server, in kube-system, as upstream's components.yaml (v0.8) installs it: its
  ServiceAccount, the aggregated reader role, the role to read nodes/metrics, pods and
  nodes, the auth-delegator and extension-apiserver-authentication-reader bindings, the
  Service `metrics-server` (443 → 10250), the Deployment (UID 65534, read-only root,
  emptyDir at /tmp for its self-signed serving certificate) and the APIService
  v1beta1.metrics.k8s.io. It scrapes each kubelet at its InternalIP and status port and
  verifies the kubelet's serving certificate against the cluster CA (pki.py signs
  them), which a ConfigMap of its own carries into the pod.

Both prefer the node CoreDNS (else Traefik) runs on: the cluster's add-ons share as few
nodes as they can, so that the others keep all their CPUs for workloads (each node has
this machine's 2 CPUs: one pod of 1 CPU fits beside an add-on, two only on a node without
any; the prod stack's six are placed on the nodes the add-ons leave whole).

`install` applies what it has an image for and waits until Prometheus answers /-/ready
from the host at its ClusterIP and the metrics API has the usage of every node.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import yaml

from modelrail.cluster import addons, pki
from modelrail.cluster import config as c
from modelrail.cluster.api import Api, condition
from modelrail.cluster.errors import ClusterError

RBAC = "rbac.authorization.k8s.io/v1"
PROMETHEUS = "prometheus"
PROMETHEUS_LABELS = {"app.kubernetes.io/name": PROMETHEUS,
                     "app.kubernetes.io/component": "monitoring",
                     "app.kubernetes.io/part-of": "modelrail"}
PROMETHEUS_SELECTOR = {"app.kubernetes.io/name": PROMETHEUS}
PROMETHEUS_ROLE = "modelrail:prometheus"
CONFIG_FILE = "prometheus.yml"
TSDB_PATH = "/prometheus"
RETENTION = "2h"
SCRAPE_INTERVAL = "5s"
JOB = "kubernetes-pods"

METRICS_SERVER = "metrics-server"
METRICS_LABELS = {"k8s-app": METRICS_SERVER}
METRICS_NAMESPACE = "kube-system"
METRICS_API_GROUP = "metrics.k8s.io"
METRICS_API_VERSION = "v1beta1"
APISERVICE = f"{METRICS_API_VERSION}.{METRICS_API_GROUP}"
KUBELET_CA_CONFIGMAP = "metrics-server-kubelet-ca"
KUBELET_CA_DIR = "/etc/kubelet-ca"
METRIC_RESOLUTION = "15s"
NODE_METRICS_PATH = f"/apis/{METRICS_API_GROUP}/{METRICS_API_VERSION}/nodes"
RUN_AS = 65534  # nobody


def prometheus_args() -> list[str]:
    """Prometheus' flags (every one exists in Prometheus 3: `prometheus --help`)."""
    return [f"--config.file=/etc/prometheus/{CONFIG_FILE}",
            f"--storage.tsdb.path={TSDB_PATH}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address=:{c.PROMETHEUS_PORT}"]


def metrics_server_args() -> list[str]:
    return [f"--secure-port={c.METRICS_SERVER_PORT}", "--cert-dir=/tmp",
            "--kubelet-preferred-address-types=InternalIP",
            "--kubelet-use-node-status-port",
            f"--metric-resolution={METRIC_RESOLUTION}",
            # the kubelets' serving certificates are the cluster CA's (pki.py): verified,
            # not skipped (--kubelet-insecure-tls is not needed)
            f"--kubelet-certificate-authority={KUBELET_CA_DIR}/ca.crt"]


def scrape_config() -> dict[str, Any]:
    """prometheus.yml: the `kubernetes-pods` job (see the module's docstring)."""
    annotation = "__meta_kubernetes_pod_annotation_prometheus_io_"
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [{
            "job_name": JOB,
            # the series' own labels (model, version, outcome, …) win over target labels
            # of the same name (a pod label `version` would otherwise rename them
            # exported_version)
            "honor_labels": True,
            # Prometheus 3 refuses a response without a valid Content-Type unless told
            # how to read it: the text format, as Prometheus 2 assumed
            "fallback_scrape_protocol": "PrometheusText0.0.4",
            "kubernetes_sd_configs": [{"role": "pod"}],
            "relabel_configs": [
                {"source_labels": [f"{annotation}scrape"], "action": "keep",
                 "regex": "true"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "action": "drop",
                 "regex": "Pending|Succeeded|Failed|Completed"},
                {"source_labels": [f"{annotation}path"], "action": "replace",
                 "regex": "(.+)", "target_label": "__metrics_path__"},
                {"source_labels": ["__address__", f"{annotation}port"],
                 "action": "replace", "regex": r"(.+?)(?::\d+)?;(\d+)",
                 "replacement": "$1:$2", "target_label": "__address__"},
                {"action": "labelmap", "regex": "__meta_kubernetes_pod_label_(.+)"},
                {"source_labels": ["__meta_kubernetes_namespace"], "action": "replace",
                 "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "action": "replace",
                 "target_label": "pod"},
            ],
        }],
    }


def config_text() -> str:
    return yaml.safe_dump(scrape_config(), sort_keys=False)


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS, "seccompProfile": {"type": "RuntimeDefault"}}


def _near_the_addons(weight: int = 100) -> dict[str, Any]:
    """Prefer the node CoreDNS runs on, else Traefik's (see the module's docstring)."""
    def term(w: int, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"weight": w, "podAffinityTerm": {
            "labelSelector": {"matchLabels": labels}, "namespaces": [namespace],
            "topologyKey": "kubernetes.io/hostname"}}
    return {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        term(weight, "kube-system", {"k8s-app": "kube-dns"}),
        term(weight // 2, c.GATEWAY_NAMESPACE, {"app.kubernetes.io/name": "traefik"})]}}


def prometheus_manifests(image: str) -> list[dict[str, Any]]:
    """Every object of Prometheus, in the order they are applied."""
    ns = c.MONITORING_NAMESPACE
    meta = {"namespace": ns, "labels": PROMETHEUS_LABELS}
    text = config_text()
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    probe = {"httpGet": {"path": "/-/ready", "port": "web"}}
    return [
        addons.restricted_namespace(ns),
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": PROMETHEUS, **meta}},
        {"apiVersion": RBAC, "kind": "ClusterRole",
         "metadata": {"name": PROMETHEUS_ROLE, "labels": PROMETHEUS_LABELS},
         "rules": [
             {"apiGroups": [""], "resources": ["pods", "endpoints", "services", "nodes"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
              "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": RBAC, "kind": "ClusterRoleBinding",
         "metadata": {"name": PROMETHEUS_ROLE, "labels": PROMETHEUS_LABELS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": PROMETHEUS_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": PROMETHEUS, "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": PROMETHEUS, **meta}, "data": {CONFIG_FILE: text}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": PROMETHEUS, **meta},
         "spec": {
             "replicas": 1, "selector": {"matchLabels": PROMETHEUS_SELECTOR},
             # its TSDB is the pod's (emptyDir): nothing to hand over
             "strategy": {"type": "Recreate"},
             "template": {
                 "metadata": {"labels": {**PROMETHEUS_LABELS, **PROMETHEUS_SELECTOR},
                              "annotations": {"modelrail.dev/config-sha256": digest}},
                 "spec": {
                     "serviceAccountName": PROMETHEUS,
                     "terminationGracePeriodSeconds": 10,
                     "securityContext": _pod_security(),
                     "affinity": _near_the_addons(),
                     "containers": [{
                         "name": PROMETHEUS, "image": image, "imagePullPolicy": "Never",
                         "args": prometheus_args(),
                         "ports": [{"name": "web", "containerPort": c.PROMETHEUS_PORT,
                                    "protocol": "TCP"}],
                         "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                                       "limits": {"memory": "1Gi"}},
                         "readinessProbe": {**probe, "periodSeconds": 2,
                                            "failureThreshold": 3},
                         "livenessProbe": {"httpGet": {"path": "/-/healthy",
                                                       "port": "web"},
                                           "initialDelaySeconds": 10, "periodSeconds": 10},
                         "securityContext": addons.restricted_security_context(),
                         "volumeMounts": [
                             {"name": "config", "mountPath": "/etc/prometheus",
                              "readOnly": True},
                             {"name": "data", "mountPath": TSDB_PATH}],
                     }],
                     "volumes": [{"name": "config", "configMap": {"name": PROMETHEUS}},
                                 {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}],
                 }},
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": PROMETHEUS, **meta},
         "spec": {"type": "ClusterIP", "clusterIP": c.PROMETHEUS_SERVICE_IP,
                  "selector": PROMETHEUS_SELECTOR,
                  "ports": [{"name": "web", "port": c.PROMETHEUS_PORT, "targetPort": "web",
                             "protocol": "TCP", "appProtocol": "http"}]}},
    ]


def metrics_server_manifests(image: str, kubelet_ca: str) -> list[dict[str, Any]]:
    """Every object of metrics-server, in the order they are applied; `kubelet_ca`: the
    PEM of the CA that signed the kubelets' serving certificates."""
    ns = METRICS_NAMESPACE
    meta = {"namespace": ns, "labels": METRICS_LABELS}
    sa = [{"kind": "ServiceAccount", "name": METRICS_SERVER, "namespace": ns}]
    ref = {"apiGroup": "rbac.authorization.k8s.io"}
    https = {"path": "/readyz", "port": "https", "scheme": "HTTPS"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": METRICS_SERVER, **meta}},
        {"apiVersion": RBAC, "kind": "ClusterRole",
         "metadata": {"name": "system:aggregated-metrics-reader", "labels": {
             **METRICS_LABELS,
             "rbac.authorization.k8s.io/aggregate-to-view": "true",
             "rbac.authorization.k8s.io/aggregate-to-edit": "true",
             "rbac.authorization.k8s.io/aggregate-to-admin": "true"}},
         "rules": [{"apiGroups": [METRICS_API_GROUP], "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": RBAC, "kind": "ClusterRole",
         "metadata": {"name": "system:metrics-server", "labels": METRICS_LABELS},
         "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": RBAC, "kind": "RoleBinding",
         "metadata": {"name": "metrics-server-auth-reader", **meta},
         "roleRef": {**ref, "kind": "Role",
                     "name": "extension-apiserver-authentication-reader"},
         "subjects": sa},
        {"apiVersion": RBAC, "kind": "ClusterRoleBinding",
         "metadata": {"name": "metrics-server:system:auth-delegator",
                      "labels": METRICS_LABELS},
         "roleRef": {**ref, "kind": "ClusterRole", "name": "system:auth-delegator"},
         "subjects": sa},
        {"apiVersion": RBAC, "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:metrics-server", "labels": METRICS_LABELS},
         "roleRef": {**ref, "kind": "ClusterRole", "name": "system:metrics-server"},
         "subjects": sa},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": KUBELET_CA_CONFIGMAP, **meta},
         "data": {"ca.crt": kubelet_ca}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": METRICS_SERVER, **meta},
         "spec": {"selector": METRICS_LABELS,
                  "ports": [{"name": "https", "port": 443, "targetPort": "https",
                             "protocol": "TCP", "appProtocol": "https"}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": METRICS_SERVER, **meta},
         "spec": {
             "replicas": 1, "selector": {"matchLabels": METRICS_LABELS},
             "strategy": {"type": "RollingUpdate",
                          "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
             "template": {"metadata": {"labels": METRICS_LABELS}, "spec": {
                 "serviceAccountName": METRICS_SERVER,
                 "priorityClassName": "system-cluster-critical",
                 "terminationGracePeriodSeconds": 10,
                 "securityContext": _pod_security(),
                 "affinity": _near_the_addons(),
                 "containers": [{
                     "name": METRICS_SERVER, "image": image, "imagePullPolicy": "Never",
                     "args": metrics_server_args(),
                     "ports": [{"name": "https", "containerPort": c.METRICS_SERVER_PORT,
                                "protocol": "TCP"}],
                     "resources": {"requests": {"cpu": "100m", "memory": "200Mi"},
                                   "limits": {"memory": "512Mi"}},
                     "readinessProbe": {"httpGet": https, "periodSeconds": 2,
                                        "failureThreshold": 3},
                     "livenessProbe": {"httpGet": {**https, "path": "/livez"},
                                       "initialDelaySeconds": 20, "periodSeconds": 10,
                                       "failureThreshold": 3},
                     "securityContext": addons.restricted_security_context(),
                     "volumeMounts": [
                         {"name": "tmp-dir", "mountPath": "/tmp"},
                         {"name": "kubelet-ca", "mountPath": KUBELET_CA_DIR,
                          "readOnly": True}],
                 }],
                 "volumes": [{"name": "tmp-dir", "emptyDir": {}},
                             {"name": "kubelet-ca",
                              "configMap": {"name": KUBELET_CA_CONFIGMAP}}],
             }},
         }},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": APISERVICE, "labels": METRICS_LABELS},
         "spec": {"service": {"name": METRICS_SERVER, "namespace": ns, "port": 443},
                  "group": METRICS_API_GROUP, "version": METRICS_API_VERSION,
                  # metrics-server serves a certificate it signs itself at start (in
                  # /tmp): there is no CA to give as caBundle (upstream does the same)
                  "insecureSkipTLSVerify": True,
                  "groupPriorityMinimum": 100, "versionPriority": 100}},
    ]


# --- waiting and reporting ----------------------------------------------------------------

def prometheus_address() -> str:
    """host:port of Prometheus' Service, from the host."""
    return f"{c.PROMETHEUS_SERVICE_IP}:{c.PROMETHEUS_PORT}"


def prometheus_url() -> str:
    return f"http://{prometheus_address()}"


def prometheus_ready() -> bool:
    """Prometheus answers 200 to /-/ready through its Service, from the host."""
    try:
        r = httpx.get(f"{prometheus_url()}/-/ready", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def node_names(api: Api) -> list[str]:
    nodes = api.get("/api/v1/nodes") or {}
    return sorted(str(n["metadata"]["name"]) for n in nodes.get("items", []))


def node_usage(api: Api) -> dict[str, dict[str, str]]:
    """The metrics API's usage of each node it has ({} while it does not answer)."""
    found = api.get(NODE_METRICS_PATH) or {}
    return {str(item["metadata"]["name"]): dict(item.get("usage", {}))
            for item in found.get("items", [])}


def metrics_for_every_node(api: Api) -> bool:
    usage = node_usage(api)
    names = node_names(api)
    return bool(names) and all("cpu" in usage.get(n, {}) and "memory" in usage.get(n, {})
                               for n in names)


def pod_log_tail(lay: c.Layout, namespace: str, app: str, lines: int = 30) -> str:
    """The last lines of a container's log (its node's kubelet pod log folder)."""
    found = sorted((log for n in lay.nodes_on_disk() for log in n.pod_logs.glob(
        f"{namespace}_{app}-*/{app}/*.log")), key=lambda p: p.stat().st_mtime)
    if not found:
        return f"(no {app} log yet)"
    return "\n".join(found[-1].read_text(errors="replace").splitlines()[-lines:])


def _wait(check: Callable[[], bool], *, timeout: float, what: str,
          log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, ClusterError, OSError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; "
                               f"its log:\n{log()}", where=what)
        time.sleep(0.5)


def install(api: Api, lay: c.Layout, prometheus_image: str | None,
            metrics_image: str | None, timeout: float = 180.0) -> list[str]:
    """Prometheus and metrics-server, each if its image is given (see the module's
    docstring): both applied, then waited for. Returns the problems that did not stop
    it (none so far)."""
    if prometheus_image:
        for obj in prometheus_manifests(prometheus_image):
            api.apply(obj)
    if metrics_image:
        ca = pki.Pki(lay.pki).ca.read_text()
        for obj in metrics_server_manifests(metrics_image, ca):
            api.apply(obj)
    if prometheus_image:
        _wait(prometheus_ready, timeout=timeout,
              what=f"Prometheus to answer /-/ready at {prometheus_address()}",
              log=lambda: pod_log_tail(lay, c.MONITORING_NAMESPACE, PROMETHEUS))
    if metrics_image:
        _wait(lambda: metrics_for_every_node(api), timeout=timeout,
              what=f"the metrics API ({NODE_METRICS_PATH}) to have every node's usage",
              log=lambda: pod_log_tail(lay, METRICS_NAMESPACE, METRICS_SERVER))
    return []


def report(api: Api) -> tuple[str, list[str]]:
    """For `status`: Prometheus' address if it answers ("" if it is not installed), and
    what is wrong (Prometheus or the metrics API installed but not answering)."""
    problems: list[str] = []
    address = ""
    svc = api.get(f"/api/v1/namespaces/{c.MONITORING_NAMESPACE}/services/{PROMETHEUS}")
    if svc is not None:
        if prometheus_ready():
            address = prometheus_address()
        else:
            problems.append(f"Prometheus does not answer /-/ready at {prometheus_address()}")
    apiservice = api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}")
    if apiservice is not None and condition(apiservice, "Available") != "True":
        problems.append(f"the metrics API ({APISERVICE}) is not Available")
    return address, problems
