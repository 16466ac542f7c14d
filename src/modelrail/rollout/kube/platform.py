"""The Kubernetes platform: a model's stable and canary tracks as Deployments, through the
Kubernetes API — and the only module that imports the Kubernetes client.

`KubePlatform` implements the Platform port (ports.py) for the operator (reconciler.py
builds the controller over it): `view` reads both Deployments (version label, readiness, a
pending scale-up, the in-cluster Service URLs), `run_canary` creates `<model>-canary` and
its HPA bounded by the canary's weight, `promote` applies the stable track at the new
version, `remove_canary` deletes both — with the same builders as the Pulumi program
(infra/manifests.py). It also carries what the other kube backends need, as plain dicts:
the Locust Jobs and their pods (load.py), the validation sample ConfigMap (gate.py, load.py),
and `KubeObjects`, custom objects by name (the Gateway API router, the ModelRollout status
in status.py, and `modelrail rollout … --kube` in cli/kube.py, which connects through
`connect` here instead of importing the client itself).

Every call here is one the operator's Role must allow: tests/rollout/kube/ records them
and compares the set with infra/manifests.py CONTROLLER_RULES, both ways.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from kubernetes import client
from kubernetes import config as kubeconfig_loader
from kubernetes.client.exceptions import ApiException

from modelrail.errors import ModelrailError
from modelrail.infra import manifests
from modelrail.infra.config import ModelSpec, StackConfig
from modelrail.rollout import api
from modelrail.rollout.ports import Platform, PlatformView, TrackState

USER_AGENT = "modelrail-operator"
# where the operator reaches a track's Service (REST) and its gRPC port, in the cluster
SERVICE_URL = "http://{service}.{namespace}.svc:" + str(manifests.HTTP_PORT)
GRPC_TARGET = "{service}.{namespace}.svc:" + str(manifests.GRPC_PORT)
SAMPLE_KEY = manifests.VALIDATION_KEY  # the key of `<model>-validation`: the sample's rows


class InvalidObjectError(ModelrailError):
    """An object the operator reads is missing or not as the Pulumi program writes it; the
    message names the object and what it lacks."""


def api_client(*, in_cluster: bool | None = None, kubeconfig: str | None = None,
               user_agent: str = USER_AGENT) -> client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")  # read now, not at import
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and kubeconfig is None
    if in_cluster:
        kubeconfig_loader.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        kubeconfig_loader.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    api_ = client.ApiClient()
    api_.user_agent = user_agent
    return api_


def context_namespace(kubeconfig: str | None) -> str | None:
    """The namespace of the kubeconfig's current context, if it names one."""
    try:
        _, active = kubeconfig_loader.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=kubeconfig or os.environ.get("KUBECONFIG"))
    except kubeconfig_loader.ConfigException:
        return None
    namespace = (active or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else None


def connect(*, namespace: str, kubeconfig: str | None, user_agent: str) -> KubeObjects:
    """Custom objects of `namespace`, for a client outside the operator (the CLI)."""
    return KubeObjects(api_client(kubeconfig=kubeconfig, user_agent=user_agent), namespace)


def _missing(exc: ApiException) -> bool:
    return bool(exc.status == 404)


def _json(resp: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resp.data)
    return data


class KubeObjects:
    """Custom objects of one namespace by name, as plain dicts (None: not found)."""

    def __init__(self, api_client_: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api_client_)
        self.namespace = namespace

    def get(self, *, group: str, version: str, plural: str, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(  # type: ignore[assignment]
                group, version, self.namespace, plural, name)
        except ApiException as exc:
            if _missing(exc):
                return None
            raise
        return obj

    def patch(self, *, group: str, version: str, plural: str, name: str,
              body: dict[str, Any]) -> None:
        """A merge patch of the object."""
        self.custom.patch_namespaced_custom_object(group, version, self.namespace, plural,
                                                   name, body)

    def rollout(self, name: str) -> dict[str, Any] | None:
        """The ModelRollout `name`, or None."""
        return self.get(group=api.GROUP, version=api.VERSION, plural=api.PLURAL, name=name)

    def patch_rollout(self, name: str, body: dict[str, Any]) -> None:
        """A merge patch of the ModelRollout `name` (spec, metadata)."""
        self.patch(group=api.GROUP, version=api.VERSION, plural=api.PLURAL, name=name,
                   body=body)

    def patch_rollout_status(self, name: str, status: dict[str, Any]) -> None:
        """A merge patch of the ModelRollout's status subresource."""
        self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, self.namespace, api.PLURAL, name, {"status": status})


# --- a Deployment as the controller sees it --------------------------------------------------

def deployment_version(d: dict[str, Any]) -> str:
    """The model version a Deployment serves, from its version label."""
    meta = d.get("metadata", {})
    version = (meta.get("labels") or {}).get(manifests.VERSION_LABEL)
    if not version:
        raise InvalidObjectError(
            f"Deployment {meta.get('namespace')}/{meta.get('name')} has no "
            f"{manifests.VERSION_LABEL} label, so the version it serves is unknown",
            where=f"Deployment {meta.get('name')}",
            accepted="the Deployment the Pulumi program writes (manifests.model_deployment)")
    return str(version)


def ready(d: dict[str, Any] | None) -> bool:
    """Rolled out and every replica ready (what `kubectl rollout status` waits for)."""
    if d is None:
        return False
    spec, st = d.get("spec", {}), d.get("status") or {}
    want = int(spec.get("replicas") or 1)
    return (int(st.get("observedGeneration") or 0) >= int(d["metadata"].get("generation") or 1)
            and int(st.get("updatedReplicas") or 0) >= want
            and int(st.get("readyReplicas") or 0) >= want)


def scale_up_pending(d: dict[str, Any] | None) -> bool:
    """Replicas were asked for (by the HPA) and are not all ready yet."""
    if d is None:
        return False
    want = int(d.get("spec", {}).get("replicas") or 1)
    return int((d.get("status") or {}).get("readyReplicas") or 0) < want


def canary_max_replicas(cfg: StackConfig, weight: int) -> int:
    """The canary HPA's ceiling: the stack's maximum scaled by the canary's share."""
    return max(1, math.ceil(cfg.autoscaling.max_replicas * max(1, weight) / 100))


class KubePlatform:
    """A stack's namespace: the models' Deployments, HPAs, load Jobs and samples."""

    def __init__(self, api_client_: client.ApiClient, cfg: StackConfig, *,
                 service_url: str = SERVICE_URL, grpc_target: str = GRPC_TARGET) -> None:
        self.cfg = cfg
        self.ns = cfg.namespace
        self.service_url = service_url
        self.grpc_target = grpc_target
        self.apps = client.AppsV1Api(api_client_)
        self.core = client.CoreV1Api(api_client_)
        self.batch = client.BatchV1Api(api_client_)
        self.autoscaling = client.AutoscalingV2Api(api_client_)
        self.objects = KubeObjects(api_client_, cfg.namespace)
        self._digests: dict[tuple[str, str], str] = {}

    # --- the Platform port --------------------------------------------------------------
    def view(self, *, model: str) -> PlatformView:
        """Both tracks' Deployments (no waiting); a Deployment without its version label
        is an InvalidObjectError."""
        return PlatformView(stable=self._track(model, "stable"),
                            canary=self._track(model, "canary"))

    def run_canary(self, *, model: str, version: str, weight: int) -> None:
        """`<model>-canary` at `version` (created, or patched from another version) and
        its HPA bounded by `weight`; the stable HPA is never touched."""
        current = self.deployment(f"{model}-canary")
        if current is None or current["metadata"].get("labels", {}).get(
                manifests.VERSION_LABEL) != version:
            self._apply(self._model(model, version), "canary", exists=current is not None)
        self._apply_canary_hpa(model, weight)

    def promote(self, *, model: str, version: str) -> None:
        """`<model>-stable` patched to serve `version` (no write when it already does)."""
        current = self.deployment(f"{model}-stable")
        if current is None or deployment_version(current) != version:
            self._apply(self._model(model, version), "stable", exists=current is not None)

    def remove_canary(self, *, model: str) -> None:
        """Delete the canary Deployment and its HPA (either may already be gone)."""
        name = f"{model}-canary"
        for delete in (self.apps.delete_namespaced_deployment,
                       self.autoscaling.delete_namespaced_horizontal_pod_autoscaler):
            try:
                delete(name, self.ns)
            except ApiException as exc:
                if not _missing(exc):
                    raise

    def pin(self, *, model: str, version: str, sha256: str | None) -> None:
        """The registry digest Deployments of `model:version` pin (from the ModelRollout)."""
        if sha256:
            self._digests[(model, version)] = sha256
        else:
            self._digests.pop((model, version), None)

    # --- deployments ---------------------------------------------------------------------
    def deployment(self, name: str) -> dict[str, Any] | None:
        """The Deployment `name` as a dict, or None."""
        try:
            return _json(self.apps.read_namespaced_deployment(name, self.ns,
                                                              _preload_content=False))
        except ApiException as exc:
            if _missing(exc):
                return None
            raise

    def _track(self, model: str, track: str) -> TrackState:
        service = f"{model}-{track}"
        d = self.deployment(service)
        if d is None:
            return TrackState(version=None, ready=False)
        return TrackState(version=deployment_version(d), ready=ready(d),
                          scaling=scale_up_pending(d),
                          http_url=self.service_url.format(service=service, namespace=self.ns),
                          grpc_target=self.grpc_target.format(service=service,
                                                              namespace=self.ns))

    def _model(self, model: str, version: str) -> ModelSpec:
        return ModelSpec(name=model, version=version,
                         sha256=self._digests.get((model, version)))

    def _apply(self, model: ModelSpec, track: str, *, exists: bool) -> None:
        body = manifests.model_deployment(self.cfg, model, track=track)
        if exists:
            self.apps.patch_namespaced_deployment(body["metadata"]["name"], self.ns, body)
        else:
            self.apps.create_namespaced_deployment(self.ns, body)  # type: ignore[arg-type]

    def _apply_canary_hpa(self, model: str, weight: int) -> None:
        name, top = f"{model}-canary", canary_max_replicas(self.cfg, weight)
        body = manifests.autoscaler(self.cfg, model, "canary", min_replicas=1, max_replicas=top)
        try:
            current = _json(self.autoscaling.read_namespaced_horizontal_pod_autoscaler(
                name, self.ns, _preload_content=False))
        except ApiException as exc:
            if not _missing(exc):
                raise
            self.autoscaling.create_namespaced_horizontal_pod_autoscaler(
                self.ns, body)  # type: ignore[arg-type]
            return
        if current.get("spec", {}).get("maxReplicas") != top:
            self.autoscaling.patch_namespaced_horizontal_pod_autoscaler(name, self.ns, body)

    # --- load Jobs (load.py) ----------------------------------------------------------------
    def create_job(self, body: dict[str, Any]) -> None:
        """Create a Job from its manifest."""
        self.batch.create_namespaced_job(self.ns, body)  # type: ignore[arg-type]

    def job(self, name: str) -> dict[str, Any] | None:
        """The Job `name` as a dict, or None."""
        try:
            return _json(self.batch.read_namespaced_job(name, self.ns, _preload_content=False))
        except ApiException as exc:
            if _missing(exc):
                return None
            raise

    def job_pods(self, name: str) -> list[dict[str, Any]]:
        """The pods the Job `name` ran, as dicts."""
        pods = _json(self.core.list_namespaced_pod(self.ns, label_selector=f"job-name={name}",
                                                   _preload_content=False))
        return list(pods.get("items") or [])

    def delete_job(self, name: str) -> None:
        """Delete the Job and its pods (it may already be gone)."""
        try:
            self.batch.delete_namespaced_job(name, self.ns, propagation_policy="Background")
        except ApiException as exc:
            if not _missing(exc):
                raise

    # --- the validation sample ----------------------------------------------------------------
    def validation_sample(self, model: str) -> list[list[float]]:
        """The rows of ConfigMap `<model>-validation` (key rows.json): what the model gate
        replays and the load Jobs send. Missing or unreadable: an InvalidObjectError that
        says so — there is no other sample to fall back on."""
        name = manifests.validation_name(model)
        where = f"ConfigMap {self.ns}/{name}, key {SAMPLE_KEY}"
        accepted = ("a JSON list of equally long rows of numbers (the registry's validation "
                    "sample of the model)")
        try:
            cm = _json(self.core.read_namespaced_config_map(name, self.ns,
                                                            _preload_content=False))
        except ApiException as exc:
            if not _missing(exc):
                raise
            raise InvalidObjectError("no validation sample: the ConfigMap does not exist",
                                     where=where, accepted=accepted) from None
        raw = (cm.get("data") or {}).get(SAMPLE_KEY)
        if raw is None:
            raise InvalidObjectError("no validation sample: the ConfigMap has no "
                                     f"{SAMPLE_KEY}", where=where, accepted=accepted)
        try:
            rows = [[float(v) for v in row] for row in json.loads(raw)]
        except (ValueError, TypeError) as exc:
            raise InvalidObjectError(f"unreadable validation sample ({exc})", where=where,
                                     accepted=accepted) from None
        if not rows or len({len(r) for r in rows}) != 1 or not all(
                math.isfinite(v) for r in rows for v in r):
            raise InvalidObjectError("unreadable validation sample (empty, ragged or not "
                                     "finite)", where=where, accepted=accepted)
        return rows


# mypy checks that the platform implements its port
_check_platform: type[Platform] = KubePlatform
