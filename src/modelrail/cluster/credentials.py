"""Credentials for a ServiceAccount of the cluster, as a platform hands them to CI: a
short-lived token from the TokenRequest API (what `kubectl create token` asks for), in a
kubeconfig of its own with the cluster's CA and the account's namespace as the context's.

`modelrail rollout … --kube --kubeconfig <file>` then acts as that account, so what CI may
do is exactly what the account's Role grants (the Pulumi program's CI Role), never what an
admin certificate could.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modelrail.cluster import config as c
from modelrail.cluster.api import Api
from modelrail.cluster.errors import ClusterError

MIN_SECONDS = 600  # the API server's floor for a token's lifetime
MAX_SECONDS = 86400


def request_token(api: Api, namespace: str, name: str, *, seconds: int = 3600) -> str:
    """A bound token for ServiceAccount `namespace/name`, valid `seconds`."""
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise ClusterError(f"a token lives {MIN_SECONDS}..{MAX_SECONDS} seconds, got {seconds}",
                           where="--duration", accepted=f"{MIN_SECONDS}..{MAX_SECONDS}")
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token"
    r = api.client.post(path, json={"apiVersion": "authentication.k8s.io/v1",
                                    "kind": "TokenRequest",
                                    "spec": {"expirationSeconds": seconds}})
    if r.status_code == 404:
        raise ClusterError(f"no ServiceAccount {name} in namespace {namespace}",
                           where=f"{namespace}/{name}",
                           accepted="an account the stack created (pulumi up), e.g. "
                                    "modelrail-dev/modelrail-ci")
    if r.status_code >= 400:
        raise ClusterError(f"TokenRequest answered {r.status_code}: {r.text[:500]}",
                           where=path)
    token = r.json().get("status", {}).get("token")
    if not token:
        raise ClusterError("TokenRequest answered without a token", where=path)
    return str(token)


def kubeconfig_for(token: str, *, namespace: str, user: str, ca: Path,
                   server: str = c.API_URL) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "modelrail", "cluster": {
            "server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "modelrail", "user": user,
                                                 "namespace": namespace}}],
        "current-context": user,
    }


def write_service_account_kubeconfig(api: Api, ca: Path, account: str, out: Path, *,
                                     seconds: int = 3600) -> Path:
    """`account` ("namespace/name") → a kubeconfig file (0600) acting as it."""
    namespace, sep, name = account.partition("/")
    if not sep or not namespace or not name:
        raise ClusterError(f"not namespace/name: {account!r}", where="--service-account",
                           accepted="NAMESPACE/NAME, e.g. modelrail-dev/modelrail-ci")
    token = request_token(api, namespace, name, seconds=seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(kubeconfig_for(
        token, namespace=namespace, user=f"system:serviceaccount:{namespace}:{name}", ca=ca),
        sort_keys=False))
    out.chmod(0o600)
    return out
