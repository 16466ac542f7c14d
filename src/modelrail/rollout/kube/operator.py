"""The kopf operator for ModelRollout (thin): every object is reconciled on a timer by
kube_controller.KubeRollout, and each decision it reports is posted as a Kubernetes Event.

    kopf run --namespace modelrail-prod --peering modelrail-controller \
        -m modelrail.rollout.kube.operator

Configuration (environment): MODELRAIL_STACK_CONFIG (the StackConfig as JSON) or
MODELRAIL_STACK + MODELRAIL_PROJECT (read Pulumi.<stack>.yaml from the image);
MODELRAIL_PROMETHEUS_URL (optional: without it error and latency checks have no data and
never pass); MODELRAIL_SERVICE_URL (template for the model Services, default
http://{service}.{namespace}.svc:3000); MODELRAIL_RECONCILE_SECONDS (default 5);
MODELRAIL_LOAD_SECONDS / MODELRAIL_LOAD_USERS (the Locust Job of each interval). Kubernetes
access: in-cluster config in a pod, else $KUBECONFIG.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import kopf

from modelrail.infra.config import StackConfig, load_stack
from modelrail.rollout.api import GROUP, PLURAL
from modelrail.rollout.api import VERSION as CRD_VERSION
from modelrail.rollout.kube.platform import KubePlatform, api_client
from modelrail.rollout.kube.rollout import KubeRollout
from modelrail.rollout.metrics.prometheus import PrometheusProvider
from modelrail.rollout.routers.gateway_api import GatewayAPIRouter

INTERVAL = float(os.environ.get("MODELRAIL_RECONCILE_SECONDS", "5"))


def stack_from_env() -> StackConfig:
    raw = os.environ.get("MODELRAIL_STACK_CONFIG")
    if raw:
        return StackConfig.model_validate_json(raw)
    return load_stack(os.environ.get("MODELRAIL_STACK", "dev"),
                      Path(os.environ.get("MODELRAIL_PROJECT", ".")))


def controller_from_env() -> KubeRollout:
    from kubernetes import client

    cfg = stack_from_env()
    api = api_client()
    prometheus = os.environ.get("MODELRAIL_PROMETHEUS_URL")
    return KubeRollout(
        platform=KubePlatform(api, cfg),
        router=GatewayAPIRouter(client.CustomObjectsApi(api), cfg.namespace),
        metrics=PrometheusProvider(prometheus) if prometheus else None,
        service_url=os.environ.get("MODELRAIL_SERVICE_URL",
                                   "http://{service}.{namespace}.svc:3000"),
        load_seconds=int(os.environ.get("MODELRAIL_LOAD_SECONDS", "10")),
        load_users=int(os.environ.get("MODELRAIL_LOAD_USERS", "4")))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's service account in a cluster, else $KUBECONFIG (also one without
    credentials, such as a local API mock)."""
    return (kopf.login_with_service_account(**kwargs)
            or kopf.login_with_kubeconfig(**kwargs))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = logging.INFO  # decisions become Events
    settings.watching.server_timeout = 120
    # a namespaced Role cannot list namespaces: watch only the one given by --namespace
    settings.scanning.disabled = True
    # replicas peer on one KopfPeering (--peering); the highest priority acts, the others
    # wait. Equal priorities would pause them all, so each replica draws its own.
    settings.peering.priority = int(os.environ.get("MODELRAIL_PEERING_PRIORITY")
                                    or random.SystemRandom().randint(1, 2**30))
    memo["controller"] = controller_from_env()


@kopf.timer(GROUP, CRD_VERSION, PLURAL, interval=INTERVAL, sharp=False)
def reconcile(body: kopf.Body, memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any],
              **_: Any) -> None:
    controller: KubeRollout = memo["controller"]
    for kind, reason, message in controller.reconcile(dict(body)):
        kopf.event(body, type=kind, reason=reason, message=message)
        logger.info("%s %s: %s", kind, reason, message)
