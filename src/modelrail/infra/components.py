"""Pulumi ComponentResources over the manifest builders: one per concept.

  modelrail:infra:Environment         namespace, quota, limits, network policy, the serving and
                                      CI accounts, the CI deployer's RBAC
  modelrail:infra:RolloutController   the ModelRollout CRD, the controller's account, RBAC and
                                      Deployment
  modelrail:infra:ModelDeployment     one model's Deployment, Services, HPA, PDB, routes and
                                      ModelRollout
Children are created from the builders' dicts through an explicit kind → resource class
map (an unknown kind is an error, never a silent fallback), parented to the component.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from modelrail.infra import manifests
from modelrail.infra.config import ModelSpec, StackConfig

Factory = Callable[..., pulumi.CustomResource]


def _custom(obj: dict[str, Any]) -> Factory:
    def make(name: str, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
        return k8s.apiextensions.CustomResource(
            name, api_version=obj["apiVersion"], kind=obj["kind"], metadata=obj["metadata"],
            spec=obj["spec"], opts=opts)
    return make


# (apiVersion, kind) → resource class. Only what the builders produce.
KINDS: dict[tuple[str, str], Any] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ResourceQuota"): k8s.core.v1.ResourceQuota,
    ("v1", "LimitRange"): k8s.core.v1.LimitRange,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "Service"): k8s.core.v1.Service,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("rbac.authorization.k8s.io/v1", "Role"): k8s.rbac.v1.Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s.rbac.v1.RoleBinding,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s.autoscaling.v2.HorizontalPodAutoscaler,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"):
        k8s.apiextensions.v1.CustomResourceDefinition,
}
CUSTOM_KINDS = {(manifests.GATEWAY_API, "HTTPRoute"), (manifests.GATEWAY_API, "GRPCRoute"),
                (manifests.ROLLOUT_API, "ModelRollout"), (manifests.PEERING_API, "KopfPeering")}
_FIELDS = {"metadata": "metadata", "spec": "spec", "rules": "rules", "roleRef": "role_ref",
           "subjects": "subjects", "automountServiceAccountToken":
               "automount_service_account_token"}


def resource_name(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{ns + '-' if ns else ''}{obj['kind'].lower()}-{meta['name']}"


def create(obj: dict[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """The Pulumi resource for one manifest dict."""
    key = (obj["apiVersion"], obj["kind"])
    name = resource_name(obj)
    if key in CUSTOM_KINDS:
        return _custom(obj)(name, opts)
    cls = KINDS.get(key)
    if cls is None:
        known = ", ".join(f"{a}/{k}" for a, k in sorted(KINDS) + sorted(CUSTOM_KINDS))
        raise ValueError(f"no Pulumi resource for {key[0]}/{key[1]}; known: {known}")
    kwargs = {_FIELDS[k]: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    return cls(name, opts=opts, **kwargs)  # type: ignore[no-any-return]


def _children(parent: pulumi.ComponentResource, objs: list[dict[str, Any]],
              depends_on: list[pulumi.Resource] | None = None) -> dict[str, Any]:
    opts = pulumi.ResourceOptions(parent=parent, depends_on=depends_on or [])
    return {resource_name(o): create(o, opts) for o in objs}


@dataclass(frozen=True)
class EnvironmentArgs:
    config: StackConfig


class Environment(pulumi.ComponentResource):
    def __init__(self, name: str, args: EnvironmentArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("modelrail:infra:Environment", name, None, opts)
        objs = manifests.environment(args.config)
        ns_obj, rest = objs[0], objs[1:]
        self.namespace = create(ns_obj, pulumi.ResourceOptions(parent=self))
        self.resources = _children(self, rest, depends_on=[self.namespace])
        self.namespace_name = args.config.namespace
        self.register_outputs({"namespace": self.namespace_name,
                               "service_accounts": [manifests.SERVING_SA, manifests.CI_SA]})


@dataclass(frozen=True)
class RolloutControllerArgs:
    config: StackConfig
    environment: Environment


class RolloutController(pulumi.ComponentResource):
    def __init__(self, name: str, args: RolloutControllerArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("modelrail:infra:RolloutController", name, None, opts)
        crd, *access, deployment = manifests.controller(args.config)
        self.crd = create(crd, pulumi.ResourceOptions(parent=self))
        self.access = _children(self, access, depends_on=[args.environment.namespace])
        self.deployment = create(deployment, pulumi.ResourceOptions(
            parent=self, depends_on=[self.crd, args.environment.namespace,
                                     *self.access.values()]))
        self.register_outputs({"crd": crd["metadata"]["name"],
                               "deployment": deployment["metadata"]["name"],
                               "service_account": manifests.CONTROLLER_SA})


@dataclass(frozen=True)
class ModelDeploymentArgs:
    config: StackConfig
    model: ModelSpec
    environment: Environment
    controller: RolloutController


class ModelDeployment(pulumi.ComponentResource):
    def __init__(self, name: str, args: ModelDeploymentArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("modelrail:infra:ModelDeployment", name, None, opts)
        objs = manifests.model_serving(args.config, args.model)
        deps: list[pulumi.Resource] = [args.environment.namespace, args.controller.crd]
        rollouts = [o for o in objs if o["kind"] == "ModelRollout"]
        self.resources = _children(self, [o for o in objs if o["kind"] != "ModelRollout"],
                                   depends_on=deps)
        # the operator puts a finalizer on its ModelRollout: it must be running when the
        # resource is created and still running when `pulumi destroy` deletes it (else
        # the deletion, and the namespace's, waits forever)
        self.resources |= _children(self, rollouts, depends_on=[
            *deps, args.controller.deployment, *args.controller.access.values()])
        cfg, model = args.config, args.model
        self.register_outputs({
            "model": model.ref,
            "http_url": f"https://{model.name}.{cfg.hostname}/v2/models/{model.name}",
            "grpc_target": f"{model.name}.{cfg.hostname}:443",
            "stable_deployment": f"{model.name}-stable",
        })
