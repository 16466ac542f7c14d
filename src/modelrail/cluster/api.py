"""A few calls to the cluster's API server over HTTPS with the admin client certificate
(httpx): readiness, get, create-if-absent, server-side apply, delete. What `up` needs to
wait for the control plane and the node and to install the add-ons, and what `status`
reports; the rollout wing talks to clusters through its own Kubernetes client
(rollout/kube/).
"""

from __future__ import annotations

import json
import ssl
from datetime import datetime
from typing import Any

import httpx

from modelrail.cluster import config as c
from modelrail.cluster.errors import ClusterError
from modelrail.cluster.pki import Pki

FIELD_MANAGER = "modelrail"


class Api:
    """The API server at https://10.214.0.2:6443 as the cluster's admin."""

    def __init__(self, pki: Pki, *, base_url: str = c.API_URL, timeout: float = 10.0) -> None:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        ctx.load_cert_chain(str(pki.crt("admin")), str(pki.key("admin")))
        self.client = httpx.Client(base_url=base_url, verify=ctx, timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def readyz(self) -> tuple[bool, str]:
        """/readyz?verbose: whether the API server is ready, and its list of checks."""
        try:
            r = self.client.get("/readyz", params={"verbose": "1"})
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return r.status_code == 200, r.text

    def get(self, path: str, **params: str) -> dict[str, Any] | None:
        """The object at `path`, or None if it does not exist."""
        r = self.client.get(path, params=params)
        if r.status_code == 404:
            return None
        _check(r, f"GET {path}")
        data: dict[str, Any] = r.json()
        return data

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to the collection at `path` unless an object of that name is
        there already (it is left as is: a Service's ClusterIP answers 422, not 409, when
        created twice); raises ClusterError with the API's message (a refusal by
        admission included)."""
        name = body.get("metadata", {}).get("name", "")
        existing = self.get(f"{path}/{name}") if name else None
        if existing is not None:
            return existing
        r = self.client.post(path, json=body)
        if r.status_code == 409:
            return self.get(f"{path}/{name}") or {}
        _check(r, f"POST {path}")
        data: dict[str, Any] = r.json()
        return data

    def apply(self, body: dict[str, Any], *, manager: str = FIELD_MANAGER,
              ) -> dict[str, Any]:
        """Server-side apply of `body` (created or updated; the fields `manager` set
        before and left out now are removed, conflicts with other managers are taken
        over): how objects that may change between two `up`s of one cluster, and CRDs
        too large for client-side apply's annotation, are installed."""
        path = object_path(body)
        r = self.client.patch(path, params={"fieldManager": manager, "force": "true"},
                              content=json.dumps(body),
                              headers={"Content-Type": "application/apply-patch+yaml"})
        _check(r, f"apply {body.get('kind')} {path}")
        data: dict[str, Any] = r.json()
        return data

    def try_create(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST without raising: the status code and the response (a Status on refusal)."""
        r = self.client.post(path, json=body)
        data: dict[str, Any] = r.json() if r.content else {}
        return r.status_code, data

    def delete(self, path: str, *, grace_seconds: int | None = None) -> None:
        params = {} if grace_seconds is None else {"gracePeriodSeconds": str(grace_seconds)}
        r = self.client.delete(path, params=params)
        if r.status_code != 404:
            _check(r, f"DELETE {path}")


def _plural(kind: str) -> str:
    """The resource name of a kind, by the English rule the API's kinds follow (every kind
    this package and its tests install: Policy → policies, Gateway → gateways,
    GatewayClass → gatewayclasses)."""
    low = kind.lower()
    if low.endswith("y") and low[-2:-1] not in ("a", "e", "i", "o", "u"):
        return low[:-1] + "ies"
    if low.endswith("s"):
        return low + "es"
    return low + "s"


def object_path(body: dict[str, Any]) -> str:
    """The URL path of the object `body` describes (apiVersion, kind, metadata)."""
    api_version = str(body["apiVersion"])
    meta = body.get("metadata", {})
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    namespace = meta.get("namespace")
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"{prefix}{scope}/{_plural(str(body['kind']))}/{meta['name']}"


def _check(r: httpx.Response, what: str) -> None:
    if r.status_code >= 400:
        try:
            message = str(r.json().get("message", r.text))
        except ValueError:
            message = r.text
        raise ClusterError(f"{what} answered {r.status_code}: {message[:1500]}",
                           where=str(r.url))


def condition(obj: dict[str, Any] | None, kind: str) -> str | None:
    """The status ("True", "False", "Unknown") of one of an object's conditions."""
    for cond in (obj or {}).get("status", {}).get("conditions", []) or []:
        if cond.get("type") == kind:
            return str(cond.get("status"))
    return None


def node_ready(api: Api, *, since: float | None = None, name: str = c.NODE_NAME) -> bool:
    """The node `name` is Ready (and, with `since`, its kubelet said so at or after that
    time: after a restart the old Ready condition stays in etcd until it times out)."""
    node = api.get(f"/api/v1/nodes/{name}")
    for cond in (node or {}).get("status", {}).get("conditions", []) or []:
        if cond.get("type") == "Ready":
            if cond.get("status") != "True":
                return False
            if since is None:
                return True
            beat = datetime.fromisoformat(str(cond.get("lastHeartbeatTime"))
                                          .replace("Z", "+00:00"))
            return beat.timestamp() >= int(since)
    return False
