"""Kubernetes objects of an environment, as plain dicts: the single source of truth.

Pure functions of the StackConfig (no I/O, no Pulumi, no cluster). Used by the Pulumi
components (components.py), by `modelrail render`, by the environment diff and parity
check, and by the rollout controller when it derives a canary from the stable Deployment
(`model_deployment(..., track="canary", version=…)`).
"""

from __future__ import annotations

import json
from typing import Any

from modelrail.infra.config import ModelSpec, StackConfig
from modelrail.rollout import api
from modelrail.rollout.core.policy import SHADOW_HEADER, RolloutPolicy
from modelrail.serving.config import ShadowSettings

Obj = dict[str, Any]

GROUP = api.GROUP
ROLLOUT_API = api.API_VERSION
HTTP_PORT = 3000  # BentoML's port in the image
GRPC_PORT = 8001
RUN_AS = 1034  # the image's numeric non-root user (services/inference/Dockerfile.template)
CONTROLLER_HEALTH_PORT = 8080
SERVING_SA = "modelrail-inference"
CONTROLLER_SA = "modelrail-controller"
CI_SA = "modelrail-ci"
PART_OF = {"app.kubernetes.io/part-of": "modelrail"}
GATEWAY_API = "gateway.networking.k8s.io/v1"
PEERING_API = "kopf.dev/v1"
PEERING = "modelrail-controller"  # the KopfPeering the controller replicas coordinate on
# labels of the program's objects; the operator reads a serving Deployment's version from
# VERSION_LABEL
ENVIRONMENT_LABEL = f"{GROUP}/environment"
TRACK_LABEL = f"{GROUP}/track"
VERSION_LABEL = f"{GROUP}/model-version"
PRE_STOP_SECONDS = 5  # an inference pod serves on this long after it is told to go
LOADTEST = "loadtest"  # the component of the Locust Jobs (the NetworkPolicies name it)


def _meta(name: str, cfg: StackConfig, *, namespaced: bool = True,
          labels: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"name": name, "labels": {**PART_OF, ENVIRONMENT_LABEL: cfg.environment,
                                          **(labels or {})}}
    if namespaced:
        meta["namespace"] = cfg.namespace
    return meta


def _pod_security() -> Obj:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> Obj:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


# --- environment -------------------------------------------------------------------------

def namespace(cfg: StackConfig) -> Obj:
    psa = {f"pod-security.kubernetes.io/{mode}": "restricted"
           for mode in ("enforce", "audit", "warn")}
    psa["pod-security.kubernetes.io/enforce-version"] = "latest"
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": _meta(cfg.namespace, cfg, namespaced=False, labels=psa)}


def resource_quota(cfg: StackConfig) -> Obj:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": _meta("modelrail", cfg),
            "spec": {"hard": {"requests.cpu": cfg.quota.cpu,
                              "requests.memory": cfg.quota.memory,
                              "pods": str(cfg.quota.pods)}}}


def limit_range(cfg: StackConfig) -> Obj:
    r = cfg.resources
    return {"apiVersion": "v1", "kind": "LimitRange", "metadata": _meta("modelrail", cfg),
            "spec": {"limits": [{"type": "Container",
                                 "default": {"cpu": r.cpu_limit, "memory": r.memory_limit},
                                 "defaultRequest": {"cpu": r.cpu_request,
                                                    "memory": r.memory_request}}]}}


def _ns_selector(name: str) -> Obj:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _ports(*ports: int, protocol: str = "TCP") -> list[Obj]:
    return [{"protocol": protocol, "port": p} for p in ports]


def network_policies(cfg: StackConfig) -> list[Obj]:
    """Default deny, then only what serving, the gateway, monitoring and the controller need."""
    api = "networking.k8s.io/v1"
    inference = {"matchLabels": {"app.kubernetes.io/component": "inference"}}
    return [
        {"apiVersion": api, "kind": "NetworkPolicy", "metadata": _meta("default-deny", cfg),
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {"apiVersion": api, "kind": "NetworkPolicy", "metadata": _meta("allow-dns", cfg),
         "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                  "egress": [{"to": [_ns_selector("kube-system")],
                              "ports": _ports(53, protocol="UDP") + _ports(53)}]}},
        {"apiVersion": api, "kind": "NetworkPolicy",
         "metadata": _meta("allow-inference-ingress", cfg),
         "spec": {"podSelector": inference, "policyTypes": ["Ingress"],
                  "ingress": [
                      {"from": [_ns_selector(cfg.gateway.namespace)],
                       "ports": _ports(HTTP_PORT, GRPC_PORT)},
                      # the controller and load-test Jobs of this namespace
                      {"from": [{"podSelector": {"matchExpressions": [{
                          "key": "app.kubernetes.io/component", "operator": "In",
                          "values": ["controller", LOADTEST]}]}}],
                       "ports": _ports(HTTP_PORT, GRPC_PORT)},
                      {"from": [_ns_selector(cfg.monitoring_namespace)],
                       "ports": _ports(HTTP_PORT)}]}},
        {"apiVersion": api, "kind": "NetworkPolicy",
         "metadata": _meta("allow-controller-egress", cfg),
         "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "controller"}},
                  "policyTypes": ["Egress"],
                  "egress": [
                      {"to": [{"podSelector": inference}], "ports": _ports(HTTP_PORT, GRPC_PORT)},
                      {"to": [_ns_selector(cfg.monitoring_namespace)], "ports": _ports(9090)},
                      # the Kubernetes API server (its address differs per cluster)
                      {"ports": _ports(443, 6443)}]}},
        *([] if cfg.rollout.shadow is None else [
            # the stable servers' mirror reaches the canary through the gateway
            {"apiVersion": api, "kind": "NetworkPolicy",
             "metadata": _meta("allow-shadow-egress", cfg),
             "spec": {"podSelector": inference, "policyTypes": ["Egress"],
                      "egress": [{"to": [_ns_selector(cfg.gateway.namespace)]}]}}]),
        {"apiVersion": api, "kind": "NetworkPolicy",
         "metadata": _meta("allow-loadtest-egress", cfg),
         "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/component": LOADTEST}},
                  "policyTypes": ["Egress"],
                  "egress": [{"to": [{"podSelector": inference}],
                              "ports": _ports(HTTP_PORT, GRPC_PORT)}]}},
    ]


def service_account(cfg: StackConfig, name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, cfg),
            "automountServiceAccountToken": name != SERVING_SA}


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> Obj:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


READ = ["get", "list", "watch"]
CI_RULES = [
    # exactly what `modelrail rollout start|status|promote|abort --kube [--wait]` does:
    # read the ModelRollout (its status comes with it) and patch its spec or annotation;
    # the API server's audit log of a real run shows these two and nothing else
    # (tests/cluster/test_rollouts.py compares them both ways)
    _rule([GROUP], [api.PLURAL], ["get", "patch"]),
]
# exactly what the operator uses: tests/rollout/kube/test_operator.py records every call it
# makes on KMock and compares the set with these rules, both ways
CONTROLLER_RULES = [
    _rule([GROUP], [api.PLURAL], ["get", "list", "watch", "patch"]),
    _rule([GROUP], [f"{api.PLURAL}/status"], ["patch"]),
    _rule(["apps"], ["deployments"], ["get", "create", "patch", "delete"]),
    _rule(["gateway.networking.k8s.io"], ["httproutes", "grpcroutes"], ["get", "patch"]),
    _rule(["autoscaling"], ["horizontalpodautoscalers"], ["get", "create", "patch", "delete"]),
    _rule(["batch"], ["jobs"], ["get", "create", "delete"]),  # the Locust Jobs
    _rule([""], ["pods"], ["list"]),  # a finished Job's pod: its termination message
    _rule([""], ["configmaps"], ["get"]),  # <model>-validation: the model gate's sample
    _rule([""], ["events"], ["create"]),
    _rule(["kopf.dev"], ["kopfpeerings"], ["list", "watch", "patch"]),  # replicas coordinate
]


def role(cfg: StackConfig, name: str, sa: str, rules: list[Obj]) -> list[Obj]:
    """A least-privilege Role (namespaced, no wildcards) and its binding to one account."""
    return [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": _meta(name, cfg), "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": _meta(name, cfg),
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": cfg.namespace}]}]


def environment(cfg: StackConfig) -> list[Obj]:
    """The namespace and what every environment has regardless of models: quota, limits,
    network policy, the serving and CI accounts, and the CI deployer's Role."""
    return [namespace(cfg), resource_quota(cfg), limit_range(cfg), *network_policies(cfg),
            service_account(cfg, SERVING_SA), service_account(cfg, CI_SA),
            *role(cfg, "modelrail-ci", CI_SA, CI_RULES)]


# --- model serving -----------------------------------------------------------------------

def model_labels(model: str, track: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": model, "app.kubernetes.io/component": "inference",
            TRACK_LABEL: track}


def model_deployment(cfg: StackConfig, model: ModelSpec, *, track: str = "stable") -> Obj:
    """The serving Deployment of one model version; the controller builds the canary with
    track="canary" and the candidate ModelSpec."""
    labels = model_labels(model.name, track)
    r = cfg.resources
    http_get = {"path": "/v2/health/ready", "port": "http"}
    container = {
        "name": "inference", "image": cfg.image,
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}],
        "env": [{"name": "MODELRAIL_MODELS", "value": model.ref},
                {"name": "MODELRAIL_GRPC_PORT", "value": str(GRPC_PORT)},
                {"name": "MODELRAIL_WORKERS", "value": str(cfg.workers)},
                {"name": "BENTOML_PORT", "value": str(HTTP_PORT)},
                *header_route_env(cfg),
                *(shadow_env(cfg, model.name) if track == "stable" else [])],
        "resources": {"requests": {"cpu": r.cpu_request, "memory": r.memory_request},
                      "limits": {"cpu": r.cpu_limit, "memory": r.memory_limit}},
        "readinessProbe": {"httpGet": http_get, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                          "periodSeconds": 10, "failureThreshold": 3},
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                         "periodSeconds": 2, "failureThreshold": 60},
        "securityContext": _container_security(),
        # on deletion (scale-down, rolling update, the canary removed) keep serving for a
        # moment before SIGTERM: the Gateway and kube-proxy drop the endpoint only once
        # they see it go, and a request sent meanwhile to a closed server is a 502 (seen
        # on the real cluster). No shell or binary needed: the kubelet's own sleep
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        # writable places on a read-only root filesystem: scratch and BentoML's metrics dir
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "metrics",
                          "mountPath": "/home/bentoml/prometheus_multiproc_dir"}],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta(f"{model.name}-{track}", cfg,
                          labels={**labels, VERSION_LABEL: model.version}),
        "spec": {
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {**labels, **PART_OF,
                                        VERSION_LABEL: model.version},
                             "annotations": {"prometheus.io/scrape": "true",
                                             "prometheus.io/port": str(HTTP_PORT),
                                             "prometheus.io/path": "/metrics"}},
                "spec": {"serviceAccountName": SERVING_SA,
                         "automountServiceAccountToken": False,
                         "securityContext": _pod_security(),
                         "terminationGracePeriodSeconds": 30,
                         "containers": [container],
                         "volumes": [{"name": "tmp", "emptyDir": {}},
                                     {"name": "metrics", "emptyDir": {}}]}}}}


def model_service(cfg: StackConfig, model: str, track: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(f"{model}-{track}", cfg, labels=model_labels(model, track)),
            "spec": {"selector": model_labels(model, track),
                     "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http",
                                "protocol": "TCP", "appProtocol": "http"},
                               {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc",
                                "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}]}}


def autoscaler(cfg: StackConfig, model: str, track: str = "stable",
               *, min_replicas: int | None = None, max_replicas: int | None = None) -> Obj:
    a = cfg.autoscaling
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(f"{model}-{track}", cfg, labels=model_labels(model, track)),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": f"{model}-{track}"},
                     "minReplicas": a.min_replicas if min_replicas is None else min_replicas,
                     "maxReplicas": a.max_replicas if max_replicas is None else max_replicas,
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization":
                                                       a.target_cpu_utilization}}}],
                     "behavior": {
                         "scaleUp": {"stabilizationWindowSeconds":
                                     a.scale_up_stabilization_seconds,
                                     "policies": [{"type": "Percent", "value": 100,
                                                   "periodSeconds": 15}]},
                         "scaleDown": {"stabilizationWindowSeconds":
                                       a.scale_down_stabilization_seconds,
                                       "policies": [{"type": "Pods", "value": 1,
                                                     "periodSeconds": 60}]}}}}


def header_route_env(cfg: StackConfig) -> list[Obj]:
    """With the stack's headerRoute, the servers count its requests apart
    (MODELRAIL_HEADER_ROUTE: their metrics' route label)."""
    h = cfg.rollout.header_route
    return [] if h is None else [{"name": "MODELRAIL_HEADER_ROUTE",
                                  "value": f"{h.name}={h.value}"}]


def shadow_env(cfg: StackConfig, model: str, *, target: str | None = None) -> list[Obj]:
    """With the stack's shadow phase, the stable servers' mirror (MODELRAIL_SHADOW): its
    share and queue, and the gateway it sends to (`target`, default the stack's
    gateway.address) with the model's hostname, so the route's shadow rule picks the
    track. Only stable mirrors; a canary never does."""
    sh = cfg.rollout.shadow
    address = target or cfg.gateway.address
    if sh is None or address is None:
        return []
    settings = ShadowSettings(percent=sh.percent, target=address,
                              host=f"{model}.{cfg.hostname}", queue=sh.queue,
                              timeout=sh.timeout_seconds)
    return [{"name": "MODELRAIL_SHADOW", "value": settings.to_env()}]


# the validation sample a cluster's operator replays (model gate) and sends as load:
# ConfigMap `<model>-validation`, key rows.json, a JSON list of rows
VALIDATION_KEY = "rows.json"


def validation_name(model: str) -> str:
    return f"{model}-validation"


def validation_configmap(model: str, namespace: str, rows: list[list[float]]) -> Obj:
    """The ConfigMap of a model's validation sample (`modelrail model sample
    --configmap`), published by the platform beside the stack."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": validation_name(model), "namespace": namespace,
                         "labels": {**PART_OF, "app.kubernetes.io/name": model}},
            "data": {VALIDATION_KEY: json.dumps(rows)}}


def disruption_budget(cfg: StackConfig, model: str) -> Obj:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(f"{model}-stable", cfg, labels=model_labels(model, "stable")),
            "spec": {"maxUnavailable": 1,
                     "selector": {"matchLabels": model_labels(model, "stable")}}}


def _backends(model: str, port: int, canary_weight: int) -> list[Obj]:
    return [{"name": f"{model}-stable", "port": port, "weight": 100 - canary_weight},
            {"name": f"{model}-canary", "port": port, "weight": canary_weight}]


def _route(cfg: StackConfig, model: str, kind: str, port: int, match: Obj,
           canary_weight: int) -> Obj:
    """A model's route: the weighted split; with the stack's headerRoute, first a rule
    matching that header too (more header matches take precedence in Gateway API), on
    stable until the operator turns it to the canary while one runs; with a shadow phase,
    the HTTPRoute's rule for stable's mirror the same way."""
    rules = [{"matches": [match], "backendRefs": _backends(model, port, canary_weight)}]
    header = cfg.rollout.header_route
    if header is not None:
        rules.insert(0, {"matches": [{**match, "headers": [
            {"type": "Exact", "name": header.name, "value": header.value}]}],
            "backendRefs": _backends(model, port, 0)})
    if cfg.rollout.shadow is not None and kind == "HTTPRoute":
        # stable's mirror (REST): on stable, which refuses it, until the operator turns it
        # to the canary for the shadow phase
        rules.insert(0, {"matches": [{**match, "headers": [
            {"type": "Exact", "name": SHADOW_HEADER, "value": "1"}]}],
            "backendRefs": _backends(model, port, 0)})
    return {"apiVersion": GATEWAY_API, "kind": kind,
            "metadata": _meta(model, cfg, labels={"app.kubernetes.io/name": model}),
            "spec": {"parentRefs": [{"name": cfg.gateway.name,
                                     "namespace": cfg.gateway.namespace}],
                     "hostnames": [f"{model}.{cfg.hostname}"], "rules": rules}}


def http_route(cfg: StackConfig, model: str, canary_weight: int = 0) -> Obj:
    return _route(cfg, model, "HTTPRoute", HTTP_PORT,
                  {"path": {"type": "PathPrefix", "value": "/"}}, canary_weight)


def grpc_route(cfg: StackConfig, model: str, canary_weight: int = 0) -> Obj:
    return _route(cfg, model, "GRPCRoute", GRPC_PORT,
                  {"method": {"type": "Exact", "service": "inference.GRPCInferenceService"}},
                  canary_weight)


def rollout_spec(policy: RolloutPolicy, model: ModelSpec) -> Obj:
    """A model's ModelRollout spec: the stack's policy in the contract's type (api.py)."""
    return api.ModelRolloutSpec.from_policy(policy, model=model.name, version=model.version,
                                            sha256=model.sha256).to_resource()


def model_rollout(cfg: StackConfig, model: ModelSpec) -> Obj:
    return {"apiVersion": ROLLOUT_API, "kind": api.KIND,
            "metadata": _meta(model.name, cfg, labels={"app.kubernetes.io/name": model.name}),
            "spec": rollout_spec(cfg.rollout, model)}


def model_serving(cfg: StackConfig, model: ModelSpec) -> list[Obj]:
    return [model_deployment(cfg, model), model_service(cfg, model.name, "stable"),
            model_service(cfg, model.name, "canary"), autoscaler(cfg, model.name),
            disruption_budget(cfg, model.name), http_route(cfg, model.name),
            grpc_route(cfg, model.name), model_rollout(cfg, model)]


# --- rollout controller ------------------------------------------------------------------

def rollout_crd() -> Obj:
    """The ModelRollout CustomResourceDefinition (built from the contract, api.py)."""
    return api.crd(labels=dict(PART_OF))


def controller_deployment(cfg: StackConfig) -> Obj:
    labels = {"app.kubernetes.io/name": "modelrail-controller",
              "app.kubernetes.io/component": "controller"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta("modelrail-controller", cfg, labels=labels),
        "spec": {
            # two replicas for availability; kopf peering lets only the one with the
            # highest priority act, the other takes over when it is gone
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, **PART_OF}},
                "spec": {
                    "serviceAccountName": CONTROLLER_SA,
                    "securityContext": _pod_security(),
                    "containers": [{
                        "name": "controller", "image": cfg.controller_image,
                        "args": ["kopf", "run", "--peering", PEERING, "--namespace",
                                 cfg.namespace,
                                 "--liveness",
                                 f"http://0.0.0.0:{CONTROLLER_HEALTH_PORT}/healthz",
                                 "-m", "modelrail.rollout.kube.operator"],
                        "ports": [{"name": "health", "containerPort": CONTROLLER_HEALTH_PORT}],
                        # the operator serves exactly the configuration this program
                        # applied (MODELRAIL_STACK_CONFIG, validated again at its start;
                        # a change rolls the controller), not the Pulumi.<stack>.yaml
                        # baked into its image (the fallback), and builds canaries with
                        # these builders
                        "env": [{"name": "MODELRAIL_NAMESPACE", "value": cfg.namespace},
                                {"name": "MODELRAIL_STACK", "value": cfg.environment},
                                {"name": "MODELRAIL_PROJECT", "value": "/app"},
                                {"name": "MODELRAIL_STACK_CONFIG",
                                 "value": cfg.model_dump_json()},
                                {"name": "MODELRAIL_PROMETHEUS_URL",
                                 "value": f"http://prometheus.{cfg.monitoring_namespace}"
                                          ".svc:9090"}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "500m", "memory": "256Mi"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"},
                                          "periodSeconds": 10},
                        "securityContext": _container_security(),
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]}],
                    "volumes": [{"name": "tmp", "emptyDir": {}}]}}}}


def load_job(cfg: StackConfig, *, name: str, model: str, version: str, target: str,
             rows: list[list[float]], seconds: int, users: int) -> Obj:
    """The Locust run of one analysis interval as a Job (the load-test image: modelrail,
    Locust and its locustfiles). Its summary is the container's termination message."""
    argv = ["python", "-m", "modelrail.rollout.load.job", "--protocol", "rest", "--target",
            target, "--model", model, "--version", version, "--seconds", str(seconds),
            "--users", str(users)]
    labels = {"app.kubernetes.io/name": model, "app.kubernetes.io/component": LOADTEST}
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(name, cfg, labels=labels),
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 600,
                 "activeDeadlineSeconds": seconds + 120,
                 "template": {"metadata": {"labels": {**labels, **PART_OF}},
                              "spec": {"restartPolicy": "Never",
                                       "automountServiceAccountToken": False,
                                       "securityContext": _pod_security(),
                                       "containers": [{
                                           "name": "locust", "image": cfg.loadtest_image,
                                           "args": argv,
                                           "env": [{"name": "MODELRAIL_LOAD_ROWS_JSON",
                                                    "value": json.dumps(rows)}],
                                           "resources": {
                                               "requests": {"cpu": "250m", "memory": "128Mi"},
                                               "limits": {"cpu": "1", "memory": "256Mi"}},
                                           "terminationMessagePolicy": "File",
                                           "securityContext": _container_security(),
                                           "volumeMounts": [{"name": "tmp",
                                                             "mountPath": "/tmp"}]}],
                                       "volumes": [{"name": "tmp", "emptyDir": {}}]}}}}


def peering_crd() -> Obj:
    """kopf's KopfPeering CRD (as kopf ships it): where operator replicas announce
    themselves and their priorities."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "kopfpeerings.kopf.dev", "labels": dict(PART_OF)},
            "spec": {"group": "kopf.dev", "scope": "Namespaced",
                     "names": {"plural": "kopfpeerings", "singular": "kopfpeering",
                               "kind": "KopfPeering"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "properties": {"status": {
                                           "type": "object",
                                           "x-kubernetes-preserve-unknown-fields": True}},
                                       "x-kubernetes-preserve-unknown-fields": True}}}]}}


def kopf_peering(cfg: StackConfig) -> Obj:
    return {"apiVersion": PEERING_API, "kind": "KopfPeering",
            "metadata": _meta(PEERING, cfg), "spec": {}}


def controller(cfg: StackConfig) -> list[Obj]:
    """The controller install: CRDs first, then its peering, account, Role and Deployment."""
    return [rollout_crd(), peering_crd(), kopf_peering(cfg), service_account(cfg, CONTROLLER_SA),
            *role(cfg, "modelrail-controller", CONTROLLER_SA, CONTROLLER_RULES),
            controller_deployment(cfg)]


def render(cfg: StackConfig) -> list[Obj]:
    """Every object of the environment, in apply order."""
    objs = [*environment(cfg), *controller(cfg)]
    for model in cfg.models:
        objs += model_serving(cfg, model)
    return objs
