"""The Kubernetes platform: the objects a rollout acts on, through the Kubernetes API.

Thin wrappers over the official client, one method per thing the controller needs: the
canary Deployment and its HPA (built by the same manifest builders as the Pulumi program),
the stable Deployment's version and readiness, the Locust Job and its result (read from the
finished pod's termination message), the validation sample (a ConfigMap) and the rollout's
status subresource. Every call here is one the operator's Role must allow; the tests record
them and compare with CONTROLLER_RULES.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modelrail.infra import manifests
from modelrail.infra.config import ModelSpec, StackConfig
from modelrail.rollout import api

USER_AGENT = "modelrail-operator"


def api_client(*, in_cluster: bool | None = None, kubeconfig: str | None = None,
               user_agent: str = USER_AGENT) -> client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    import os

    from kubernetes import config

    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG")  # read now, not at import
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and kubeconfig is None
    if in_cluster:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    api = client.ApiClient()
    api.user_agent = user_agent
    return api


def _missing(exc: ApiException) -> bool:
    return bool(exc.status == 404)


class KubePlatform:
    def __init__(self, api: client.ApiClient, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.ns = cfg.namespace
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.custom = client.CustomObjectsApi(api)

    # --- deployments ------------------------------------------------------------------
    def deployment(self, name: str) -> dict[str, Any] | None:
        try:
            resp = self.apps.read_namespaced_deployment(name, self.ns, _preload_content=False)
        except ApiException as exc:
            if _missing(exc):
                return None
            raise
        data: dict[str, Any] = json.loads(resp.data)  # type: ignore[attr-defined]
        return data

    def version_of(self, model: str, track: str) -> str | None:
        d = self.deployment(f"{model}-{track}")
        if d is None:
            return None
        return str(d["metadata"].get("labels", {}).get("modelrail.dev/model-version")) or None

    @staticmethod
    def ready(d: dict[str, Any] | None) -> bool:
        """Rolled out and every replica ready (what `kubectl rollout status` waits for)."""
        if d is None:
            return False
        spec, st = d.get("spec", {}), d.get("status") or {}
        want = int(spec.get("replicas") or 1)
        return (int(st.get("observedGeneration") or 0) >= int(d["metadata"].get("generation")
                                                             or 1)
                and int(st.get("updatedReplicas") or 0) >= want
                and int(st.get("readyReplicas") or 0) >= want)

    @staticmethod
    def scale_up_pending(d: dict[str, Any] | None) -> bool:
        if d is None:
            return False
        want = int(d.get("spec", {}).get("replicas") or 1)
        return int((d.get("status") or {}).get("readyReplicas") or 0) < want

    def apply_track(self, model: ModelSpec, track: str) -> None:
        """Create or patch `<model>-<track>` to serve `model` (same builder as Pulumi)."""
        body = manifests.model_deployment(self.cfg, model, track=track)
        name = body["metadata"]["name"]
        if self.deployment(name) is None:
            self.apps.create_namespaced_deployment(self.ns, body)  # type: ignore[arg-type]
        else:
            self.apps.patch_namespaced_deployment(name, self.ns, body)

    def delete_canary(self, model: str) -> None:
        for call, name in ((self.apps.delete_namespaced_deployment, f"{model}-canary"),
                           (self.autoscaling.delete_namespaced_horizontal_pod_autoscaler,
                            f"{model}-canary")):
            try:
                call(name, self.ns)
            except ApiException as exc:
                if not _missing(exc):
                    raise

    # --- the canary's autoscaler ---------------------------------------------------------
    def apply_canary_hpa(self, model: str, weight: int) -> None:
        """A separate HPA for the canary, bounded by its share of traffic; stable's HPA is
        never touched."""
        a = self.cfg.autoscaling
        top = max(1, -(-a.max_replicas * max(1, weight) // 100))
        body = manifests.autoscaler(self.cfg, model, "canary", min_replicas=1,
                                    max_replicas=top)
        try:
            self.autoscaling.read_namespaced_horizontal_pod_autoscaler(f"{model}-canary",
                                                                      self.ns)
        except ApiException as exc:
            if not _missing(exc):
                raise
            self.autoscaling.create_namespaced_horizontal_pod_autoscaler(
                self.ns, body)  # type: ignore[arg-type]
            return
        self.autoscaling.patch_namespaced_horizontal_pod_autoscaler(f"{model}-canary",
                                                                    self.ns, body)

    # --- load jobs -------------------------------------------------------------------------
    def start_load(self, body: dict[str, Any]) -> str:
        self.batch.create_namespaced_job(self.ns, body)  # type: ignore[arg-type]
        return str(body["metadata"]["name"])

    def load_result(self, name: str) -> dict[str, Any] | None:
        """The finished Job's summary, {"error": …} if it failed, None while it runs."""
        try:
            job = self.batch.read_namespaced_job(name, self.ns)
        except ApiException as exc:
            if _missing(exc):
                return {"error": f"job {name} disappeared"}
            raise
        st = job.status
        if not (st and (st.succeeded or st.failed)):
            return None
        pods = self.core.list_namespaced_pod(self.ns, label_selector=f"job-name={name}")
        for pod in pods.items:
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                term = cs.state.terminated if cs.state else None
                if term is not None and term.message:
                    try:
                        data: dict[str, Any] = json.loads(term.message)
                        return data
                    except json.JSONDecodeError:
                        return {"error": f"unreadable result: {term.message[:200]}"}
        return {"error": f"job {name} finished without a result"}

    def delete_job(self, name: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, self.ns, propagation_policy="Background")
        except ApiException as exc:
            if not _missing(exc):
                raise

    # --- the validation sample --------------------------------------------------------------
    def sample(self, model: str) -> list[list[float]] | None:
        try:
            cm = self.core.read_namespaced_config_map(f"{model}-validation", self.ns)
        except ApiException as exc:
            if _missing(exc):
                return None
            raise
        raw = (cm.data or {}).get("rows.json")
        return None if raw is None else [[float(v) for v in r] for r in json.loads(raw)]

    # --- the rollout resource ----------------------------------------------------------------
    def rollout(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, self.ns, api.PLURAL, name)
        except ApiException as exc:
            if _missing(exc):
                return None
            raise
        data: dict[str, Any] = obj  # type: ignore[assignment]
        return data

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, self.ns, api.PLURAL, name,
            {"status": status})
