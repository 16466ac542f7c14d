"""The cluster's Gateway API implementation, for real (the session's cluster, conftest.py):
`up` installed the Gateway API CRDs and Traefik, the Gateway `gateway-system/
modelrail-gateway` is Programmed, and from the host, through its Service at 10.96.0.80,
- an HTTPRoute for `echo.example.test` with two weighted backends answers from both, in
  proportion, on port 80, and a request for another host gets 404;
- a GRPCRoute for `grpc.example.test` carries a gRPC call (h2c end to end) on port 8001
  to a Python gRPC server in a restricted pod, chosen by the channel's authority;
- the stacks' own HTTPRoute and GRPCRoute (modelrail.infra.manifests, Pulumi.dev.yaml),
  which share one hostname, are both Accepted (each kind has its listener) and served to
  a stand-in for a model's pods.

The gRPC servers need grpcio in a pod: an image FROM the base image with the venv's grpc
package copied in (podman, no network), imported into the node.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from modelrail.cluster import config as c
from modelrail.cluster import gateway, node, pki
from modelrail.cluster.api import Api, condition, object_path

RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1034, "runAsGroup": 1034,
                  "seccompProfile": {"type": "RuntimeDefault"}}
HEALTH_OK = b"\x08\x01"  # grpc.health.v1.HealthCheckResponse{status: SERVING}

# a gRPC server without generated code: raw bytes in, raw bytes out
GRPC_SERVER = """\
import sys
from concurrent import futures

import grpc

def serving(request, context):
    return b"\\x08\\x01"  # HealthCheckResponse{SERVING} / ServerLiveResponse{live: true}

handlers = [
    grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(serving)}),
    grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ServerLive": grpc.unary_unary_rpc_method_handler(serving)}),
]
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers(handlers)
server.add_insecure_port("0.0.0.0:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""


# --- helpers ---------------------------------------------------------------------------------

def _wait(check: Any, *, timeout: float, what: str, detail: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, grpc.RpcError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" +
                         (f": {detail()}" if detail is not None else ""))


def _api(state_dir: Path) -> Api:
    return Api(pki.Pki(c.Layout(state_dir.resolve()).pki))


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}


def _container(name: str, image: str, command: list[str], port: int, port_name: str,
               mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "image": image, "imagePullPolicy": "Never", "command": command,
            "ports": [{"name": port_name, "containerPort": port}],
            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
            "securityContext": RESTRICTED_CONTAINER, "volumeMounts": mounts}


def _pod(name: str, namespace: str, labels: dict[str, str], containers: list[dict[str, Any]],
         configmap: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": containers, "securityContext": RESTRICTED_POD,
                     "terminationGracePeriodSeconds": 1,
                     "volumes": [{"name": "files", "configMap": {"name": configmap}}]}}


def _web_pod(name: str, namespace: str, image: str, labels: dict[str, str], port: int,
             body: str) -> list[dict[str, Any]]:
    """A ConfigMap with index.html = `body` and a pod serving it with http.server."""
    return [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": name, "namespace": namespace},
         "data": {"index.html": body}},
        _pod(name, namespace, labels, [_container(
            "web", image, ["python3", "-m", "http.server", str(port), "--directory", "/srv"],
            port, "http", [{"name": "files", "mountPath": "/srv", "readOnly": True}])],
            configmap=name),
    ]


def _service(name: str, namespace: str, selector: dict[str, str], port: int,
             target: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector, "ports": [{"port": port, "targetPort": target,
                                                      "protocol": "TCP"}]}}


def _pod_ready(api: Api, namespace: str, name: str) -> bool:
    return condition(api.get(f"/api/v1/namespaces/{namespace}/pods/{name}"), "Ready") == "True"


def _route_attached(api: Api, obj: dict[str, Any]) -> bool:
    """The route's parent (our Gateway) Accepted it and resolved its references."""
    route = api.get(object_path(obj))
    for parent in (route or {}).get("status", {}).get("parents", []) or []:
        if parent.get("parentRef", {}).get("name") == c.GATEWAY_NAME:
            return condition({"status": parent}, "Accepted") == "True" and \
                condition({"status": parent}, "ResolvedRefs") == "True"
    return False


def _route_status(api: Api, obj: dict[str, Any]) -> Any:
    return (api.get(object_path(obj)) or {}).get("status")


def _get(host: str) -> httpx.Response:
    return httpx.get(f"http://{gateway.address()}/", headers={"Host": host}, timeout=3,
                     trust_env=False)


def _grpc_call(authority: str, method: str) -> bytes:
    options = [("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(gateway.grpc_address(), options=options) as channel:
        call: Any = channel.unary_unary(method)
        reply: bytes = call(b"", timeout=5)
        return reply


@pytest.fixture(scope="module")
def grpc_image(cluster: tuple[Path, Any, str]) -> str:
    """The base image with the venv's grpc package (and typing_extensions), in the node."""
    from modelrail.images import podman

    state_dir, _, base = cluster
    site = Path(grpc.__file__).parent.parent
    digest = hashlib.sha256(f"{base} grpcio {grpc.__version__}".encode()).hexdigest()[:12]
    ref = f"localhost/modelrail/test-grpc:{digest}"
    if not podman.image_exists(ref):
        with tempfile.TemporaryDirectory(prefix="mr-grpc-img-") as tmp:
            ctx = Path(tmp)
            shutil.copytree(site / "grpc", ctx / "site" / "grpc",
                            ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(site / "typing_extensions.py", ctx / "site")
            (ctx / "Containerfile").write_text(
                f"FROM {base}\nCOPY site /opt/grpc-site\nENV PYTHONPATH=/opt/grpc-site\n")
            podman.build(ctx, containerfile=ctx / "Containerfile", tag=ref,
                         labels={podman.OWNER_LABEL: "modelrail"})
    node.up(state_dir, images_to_import=[ref])  # running: only imports the image
    return ref


# --- fast: the manifests ------------------------------------------------------------------

def test_each_listener_has_an_entry_point_and_a_service_port() -> None:
    objs = {o["kind"]: o for o in gateway.manifests("localhost/modelrail/traefik:x")}
    args = gateway.traefik_args()
    listeners = objs["Gateway"]["spec"]["listeners"]
    assert [(lst["name"], lst["port"], lst["allowedRoutes"]["kinds"][0]["kind"])
            for lst in listeners] == [("web", 8000, "HTTPRoute"), ("grpc", 8001, "GRPCRoute")]
    for lst in listeners:
        assert f"--entryPoints.{lst['name']}.address=:{lst['port']}" in args
        assert lst["allowedRoutes"]["namespaces"] == {"from": "All"}
    ports = {p["name"]: (p["port"], p["targetPort"])
             for p in objs["Service"]["spec"]["ports"]}
    # every listener's port answers at the Service (the Gateway's address), and 80 too
    assert ports == {"http": (80, "web"), "web": (8000, "web"), "grpc": (8001, "grpc")}
    for lst in listeners:
        assert (lst["port"], lst["name"]) in ports.values()
    assert objs["Service"]["spec"]["clusterIP"] == c.GATEWAY_SERVICE_IP
    assert objs["GatewayClass"]["spec"]["controllerName"] == "traefik.io/gateway-controller"


def test_traefik_runs_as_the_restricted_level_asks() -> None:
    objs = {o["kind"]: o for o in gateway.manifests("localhost/modelrail/traefik:x")}
    ns = objs["Namespace"]["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "restricted"
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"]
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc["allowPrivilegeEscalation"]
    assert all(p["containerPort"] >= 1024 for p in container["ports"])


def test_object_paths() -> None:
    assert object_path({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                        "metadata": {"name": "g", "namespace": "n"}}) == \
        "/apis/gateway.networking.k8s.io/v1/namespaces/n/gateways/g"
    assert object_path({"apiVersion": "admissionregistration.k8s.io/v1",
                        "kind": "ValidatingAdmissionPolicy", "metadata": {"name": "p"}}) == \
        "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/p"
    assert object_path({"apiVersion": "v1", "kind": "Service",
                        "metadata": {"name": "s", "namespace": "n"}}) == \
        "/api/v1/namespaces/n/services/s"


# --- slow: the real gateway -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_up_installs_a_programmed_gateway(cluster: tuple[Path, Any, str]) -> None:
    state_dir, result, _ = cluster
    print(f"\nup: {result.timings}")
    assert "gateway" in result.timings, result.problems
    assert result.gateway == {"http": f"{c.GATEWAY_SERVICE_IP}:80",
                              "grpc": f"{c.GATEWAY_SERVICE_IP}:8001"} == gateway.addresses()
    assert not result.problems, result.problems  # the admission policy applied too
    assert node.status(state_dir).gateway == gateway.addresses()
    with _api(state_dir) as api:
        gw = api.get(gateway.gateway_path())
        assert gw is not None
        assert gateway.current_condition(gw, "Accepted") == "True"
        assert gateway.current_condition(gw, "Programmed") == "True"
        assert gw["status"]["addresses"] == [{"type": "IPAddress",
                                              "value": c.GATEWAY_SERVICE_IP}]
        kinds = {listener["name"]: [k["kind"] for k in listener["supportedKinds"]]
                 for listener in gw["status"]["listeners"]}
        assert kinds == {"web": ["HTTPRoute"], "grpc": ["GRPCRoute"]}
        cls = api.get(f"/apis/{gateway.GATEWAY_API}/gatewayclasses/{c.GATEWAY_CLASS}")
        assert condition(cls, "Accepted") == "True"
        assert cls is not None and cls["spec"]["controllerName"] == gateway.CONTROLLER_NAME
        ns = api.get(f"/api/v1/namespaces/{c.GATEWAY_NAMESPACE}")
        assert ns is not None
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        pods = api.get(f"/api/v1/namespaces/{c.GATEWAY_NAMESPACE}/pods",
                       labelSelector="app.kubernetes.io/name=traefik")
        assert pods is not None
        (pod,) = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
        assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
        crds = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        assert crds is not None
        names = {d["metadata"]["name"] for d in crds["items"]}
        assert {"gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io",
                "grpcroutes.gateway.networking.k8s.io"} <= names
    assert gateway.answers() == 404
    assert gateway.answers(target=gateway.grpc_address()) == 404


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_httproute_weighted_backends_by_host(cluster: tuple[Path, Any, str]) -> None:
    state_dir, _, image = cluster
    ns = "gw-echo"
    route = {"apiVersion": gateway.GATEWAY_API, "kind": "HTTPRoute",
             "metadata": {"name": "echo", "namespace": ns},
             "spec": {"parentRefs": [{"name": c.GATEWAY_NAME,
                                      "namespace": c.GATEWAY_NAMESPACE}],
                      "hostnames": ["echo.example.test"],
                      "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                 "backendRefs": [{"name": "echo-a", "port": 80, "weight": 3},
                                                 {"name": "echo-b", "port": 80, "weight": 1}]}]}}
    with _api(state_dir) as api:
        api.apply(_namespace(ns))
        for name in ("echo-a", "echo-b"):
            for obj in _web_pod(name, ns, image, {"app": name}, 8080, f"{name}\n"):
                api.apply(obj)
            api.apply(_service(name, ns, {"app": name}, 80, 8080))
        api.apply(route)
        for name in ("echo-a", "echo-b"):
            _wait(lambda n=name: _pod_ready(api, ns, n), timeout=120, what=f"pod {name} Ready")
        _wait(lambda: _route_attached(api, route), timeout=60,
              what="the HTTPRoute to be Accepted with its references resolved",
              detail=lambda: _route_status(api, route))

    # Traefik learns of the route and both endpoints: both answer (smooth weighted RR)
    seen: set[str] = set()

    def both_answered() -> bool:
        seen.add(_get("echo.example.test").text.strip())
        return seen >= {"echo-a", "echo-b"}
    _wait(both_answered, timeout=60, what="both backends to answer")
    counts = Counter(_get("echo.example.test").text.strip() for _ in range(40))
    print(f"\n40 requests: {dict(counts)}")
    assert set(counts) == {"echo-a", "echo-b"}
    assert 25 <= counts["echo-a"] <= 35, counts  # weights 3:1 → 30:10
    # the route is chosen by Host: any other host is not routed
    other = _get("other.example.test")
    assert other.status_code == 404, other.text
    assert _get("echo.example.test").status_code == 200


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_grpcroute_over_h2c_by_authority(cluster: tuple[Path, Any, str],
                                         grpc_image: str) -> None:
    state_dir, _, _ = cluster
    ns = "gw-grpc"
    route = {"apiVersion": gateway.GATEWAY_API, "kind": "GRPCRoute",
             "metadata": {"name": "health", "namespace": ns},
             "spec": {"parentRefs": [{"name": c.GATEWAY_NAME,
                                      "namespace": c.GATEWAY_NAMESPACE}],
                      "hostnames": ["grpc.example.test"],
                      "rules": [{"matches": [{"method": {"type": "Exact",
                                                         "service": "grpc.health.v1.Health"}}],
                                 "backendRefs": [{"name": "health", "port": 50051}]}]}}
    with _api(state_dir) as api:
        api.apply(_namespace(ns))
        api.apply({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "grpc-server", "namespace": ns},
                   "data": {"server.py": GRPC_SERVER}})
        api.apply(_pod("health", ns, {"app": "health"}, [_container(
            "grpc", grpc_image, ["python3", "/app/server.py", "50051"], 50051, "grpc",
            [{"name": "files", "mountPath": "/app", "readOnly": True}])],
            configmap="grpc-server"))
        api.apply(_service("health", ns, {"app": "health"}, 50051, 50051))
        api.apply(route)
        _wait(lambda: _pod_ready(api, ns, "health"), timeout=120, what="the gRPC pod Ready")
        _wait(lambda: _route_attached(api, route), timeout=60,
              what="the GRPCRoute to be Accepted with its references resolved",
              detail=lambda: _route_status(api, route))

    check = "/grpc.health.v1.Health/Check"
    reply = _wait(lambda: _grpc_call("grpc.example.test", check), timeout=60,
                  what="the health check through the gateway")
    assert reply == HEALTH_OK
    # another authority matches no route: Traefik's 404 is UNIMPLEMENTED to gRPC
    with pytest.raises(grpc.RpcError) as err:
        _grpc_call("other.example.test", check)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, err.value


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_stacks_routes_are_served(cluster: tuple[Path, Any, str], grpc_image: str,
                                      ) -> None:
    """iris's HTTPRoute and GRPCRoute as the dev stack renders them (canary weight 0),
    its stable and canary Services, and one stand-in pod with the model's labels
    (http.server on the HTTP port, the raw gRPC server on the gRPC port)."""
    from modelrail.infra import manifests
    from modelrail.infra.config import load_stack

    state_dir, _, image = cluster
    cfg = load_stack("dev", Path(__file__).resolve().parents[2])
    assert (cfg.gateway.name, cfg.gateway.namespace) == (c.GATEWAY_NAME, c.GATEWAY_NAMESPACE)
    ns, host = cfg.namespace, f"iris.{cfg.hostname}"
    routes = [manifests.http_route(cfg, "iris"), manifests.grpc_route(cfg, "iris")]
    with _api(state_dir) as api:
        api.apply(_namespace(ns))
        api.apply({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "iris", "namespace": ns},
                   "data": {"index.html": "iris-stable\n", "server.py": GRPC_SERVER}})
        mounts = [{"name": "files", "mountPath": "/srv", "readOnly": True}]
        api.apply(_pod("iris-stable", ns, manifests.model_labels("iris", "stable"), [
            _container("http", image, ["python3", "-m", "http.server",
                                       str(manifests.HTTP_PORT), "--directory", "/srv"],
                       manifests.HTTP_PORT, "http", mounts),
            _container("grpc", grpc_image, ["python3", "/srv/server.py",
                                            str(manifests.GRPC_PORT)],
                       manifests.GRPC_PORT, "grpc", mounts)], configmap="iris"))
        for track in ("stable", "canary"):
            api.apply(manifests.model_service(cfg, "iris", track))
        for route in routes:
            api.apply(route)
        _wait(lambda: _pod_ready(api, ns, "iris-stable"), timeout=120,
              what="the stand-in pod Ready")
        _wait(lambda: all(_route_attached(api, r) for r in routes), timeout=60,
              what="the stack's routes to be Accepted by the gateway",
              detail=lambda: [_route_status(api, r) for r in routes])

    r = _wait(lambda: (resp := _get(host)).status_code == 200 and resp, timeout=60,
              what=f"http://{host}/ through the gateway")
    assert r.text.strip() == "iris-stable"
    live = "/inference.GRPCInferenceService/ServerLive"
    assert _wait(lambda: _grpc_call(host, live), timeout=60,
                 what=f"gRPC ServerLive for {host}") == HEALTH_OK
    # the GRPCRoute matches the inference service only: another gRPC service falls to
    # the HTTPRoute (PathPrefix /), whose HTTP server speaks no gRPC
    with pytest.raises(grpc.RpcError):
        _grpc_call(host, "/grpc.health.v1.Health/Check")
    # the namespace is the dev stack's: leave it to `pulumi up` (tests/cluster/test_pulumi.py)
    with _api(state_dir) as api:
        api.delete(f"/api/v1/namespaces/{ns}", grace_seconds=0)
        _wait(lambda: api.get(f"/api/v1/namespaces/{ns}") is None, timeout=120,
              what=f"namespace {ns} deleted")
