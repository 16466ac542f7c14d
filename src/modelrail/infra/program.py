"""The Pulumi program: read the stack configuration once, build the components, export.

`infra/__main__.py` calls `main()`; the tests call it under `pulumi.runtime.set_mocks`.
Configuration is validated completely before the first resource is declared.

The outputs point at the Gateway the stack names, as the cluster has it: the program
reads the live Gateway (a read, not a resource it owns; a stack naming a Gateway that
does not exist fails at preview) and derives each model's URLs from the listener that
takes its route kind (HTTPRoute, GRPCRoute), the listener's port and protocol, and the
Gateway's addresses.
"""

from __future__ import annotations

from typing import Any

import pulumi

from modelrail.infra.components import (
    Environment,
    EnvironmentArgs,
    ModelDeployment,
    ModelDeploymentArgs,
    RolloutController,
    RolloutControllerArgs,
)
from modelrail.infra.config import StackConfig, from_pulumi


def build(cfg: StackConfig) -> dict[str, ModelDeployment]:
    env = Environment(cfg.environment, EnvironmentArgs(config=cfg))
    controller = RolloutController(f"{cfg.environment}-controller",
                                   RolloutControllerArgs(config=cfg, environment=env))
    models = {m.name: ModelDeployment(f"{cfg.environment}-{m.name}", ModelDeploymentArgs(
        config=cfg, model=m, environment=env, controller=controller)) for m in cfg.models}
    gateway = LiveGateway("gateway", f"{cfg.gateway.namespace}/{cfg.gateway.name}")
    pulumi.export("namespace", cfg.namespace)
    pulumi.export("environment", cfg.environment)
    pulumi.export("gateway", pulumi.Output.all(gateway.spec, gateway.status).apply(
        lambda ss: gateway_output(cfg, ss[0], ss[1])))
    pulumi.export("models", pulumi.Output.all(gateway.spec, gateway.status).apply(
        lambda ss: model_outputs(cfg, ss[0])))
    pulumi.export("ci_service_account", f"{cfg.namespace}/modelrail-ci")
    return models


GATEWAY_TYPE = "kubernetes:gateway.networking.k8s.io/v1:Gateway"


class LiveGateway(pulumi.CustomResource):
    """The Gateway the stack's routes attach to, read from the cluster (`id`:
    namespace/name). The provider's own CustomResource.get exposes no `status`, so the
    read names the properties it wants."""

    spec: pulumi.Output[Any]
    status: pulumi.Output[Any]

    def __init__(self, name: str, id: str) -> None:
        props = {"apiVersion": None, "kind": None, "metadata": None, "spec": None,
                 "status": None}
        super().__init__(GATEWAY_TYPE, name, props, pulumi.ResourceOptions(id=id))


ROUTE_PROTOCOLS = {"HTTPRoute": ("HTTP", "HTTPS"), "GRPCRoute": ("HTTP", "HTTPS")}
DEFAULT_PORTS = {"http": 80, "https": 443}


def listener_for(spec: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    """The first listener a route of `kind` may attach to: one whose allowedRoutes
    names the kind, or (none named) whose protocol serves it."""
    for lis in (spec or {}).get("listeners", []) or []:
        kinds = [k.get("kind") for k in
                 (lis.get("allowedRoutes") or {}).get("kinds", []) or []]
        if kind in kinds or (not kinds and lis.get("protocol") in ROUTE_PROTOCOLS[kind]):
            return dict(lis)
    return None


def _url_parts(lis: dict[str, Any] | None) -> tuple[str, str]:
    """(scheme, ":port" or "" for the scheme's default port)."""
    if lis is None:
        return "https", ""
    scheme = "https" if lis.get("protocol") == "HTTPS" else "http"
    port = int(lis.get("port", DEFAULT_PORTS[scheme]))
    return scheme, "" if port == DEFAULT_PORTS[scheme] else f":{port}"


def model_outputs(cfg: StackConfig, spec: dict[str, Any] | None) -> dict[str, Any]:
    http_scheme, http_port = _url_parts(listener_for(spec, "HTTPRoute"))
    grpc_lis = listener_for(spec, "GRPCRoute")
    grpc_scheme, grpc_port = _url_parts(grpc_lis)
    out = {}
    for m in cfg.models:
        host = f"{m.name}.{cfg.hostname}"
        out[m.name] = {
            "version": m.version, "ref": m.ref, "host": host,
            "http": f"{http_scheme}://{host}{http_port}/v2/models/{m.name}",
            "grpc": f"{host}{grpc_port or (':443' if grpc_scheme == 'https' else ':80')}",
            "grpc_tls": grpc_scheme == "https",
            "rollout": f"modelrollout/{m.name}"}
    return out


def gateway_output(cfg: StackConfig, spec: dict[str, Any] | None,
                   status: dict[str, Any] | None) -> dict[str, Any]:
    """Where the Gateway answers: its addresses, and address:port per route kind."""
    addresses = [a.get("value") for a in (status or {}).get("addresses", []) or []
                 if a.get("value")]
    out: dict[str, Any] = {"name": cfg.gateway.name, "namespace": cfg.gateway.namespace,
                           "addresses": addresses}
    for key, kind in (("http", "HTTPRoute"), ("grpc", "GRPCRoute")):
        lis = listener_for(spec, kind)
        # (numbers come back from the engine as floats)
        out[key] = f"{addresses[0]}:{int(lis['port'])}" if lis and addresses else None
    return out


def main() -> None:
    build(from_pulumi(pulumi.get_stack()))
