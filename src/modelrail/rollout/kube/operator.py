"""The kopf operator for ModelRollout (thin): every object is handed to the reconciler
(reconciler.py) on a timer, and each Event it returns is posted.

    kopf run --namespace modelrail-prod --peering modelrail-controller \\
        -m modelrail.rollout.kube.operator

Configuration (environment): MODELRAIL_STACK_CONFIG (the StackConfig as JSON) or
MODELRAIL_STACK + MODELRAIL_PROJECT (read Pulumi.<stack>.yaml from the image);
MODELRAIL_PROMETHEUS_URL (without it the error and latency checks have no data and never
pass, and every rollout says so: condition MetricsAvailable=False, a NoMetricsProvider
Warning); MODELRAIL_SERVICE_URL (template for the model Services, default
http://{service}.{namespace}.svc:3000); MODELRAIL_RECONCILE_SECONDS (default 5);
MODELRAIL_LOAD_SECONDS / MODELRAIL_LOAD_USERS (the Locust Job of each interval);
MODELRAIL_PEERING_PRIORITY (default: drawn at random). Kubernetes access: in-cluster config
in a pod, else $KUBECONFIG.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import kopf

from modelrail.infra.config import StackConfig, load_stack
from modelrail.rollout import api
from modelrail.rollout.core.controller import ControllerSettings
from modelrail.rollout.kube.gate import ServiceModelGate
from modelrail.rollout.kube.load import JobLoadRunner
from modelrail.rollout.kube.platform import SERVICE_URL, KubePlatform, api_client
from modelrail.rollout.kube.reconciler import NO_METRICS, Reconciler
from modelrail.rollout.metrics.prometheus import PrometheusProvider
from modelrail.rollout.routers.gateway_api import GatewayAPIRouter

INTERVAL = float(os.environ.get("MODELRAIL_RECONCILE_SECONDS", "5"))


def stack_from_env() -> StackConfig:
    """The stack configuration the operator serves."""
    raw = os.environ.get("MODELRAIL_STACK_CONFIG")
    if raw:
        return StackConfig.model_validate_json(raw)
    return load_stack(os.environ.get("MODELRAIL_STACK", "dev"),
                      Path(os.environ.get("MODELRAIL_PROJECT", ".")))


Logger = logging.Logger | logging.LoggerAdapter[Any]


def reconciler_from_env(logger: Logger | None = None) -> Reconciler:
    """The reconciler over the Kubernetes backends, configured by the environment."""
    cfg = stack_from_env()
    platform = KubePlatform(api_client(), cfg,
                            service_url=os.environ.get("MODELRAIL_SERVICE_URL", SERVICE_URL))
    prometheus = os.environ.get("MODELRAIL_PROMETHEUS_URL")
    if not prometheus and logger is not None:
        logger.warning(NO_METRICS.message)
    return Reconciler(
        platform=platform, router=GatewayAPIRouter(platform.objects),
        metrics=(PrometheusProvider(prometheus, namespace=cfg.namespace) if prometheus
                 else None),
        gate=ServiceModelGate(platform), load=JobLoadRunner(platform),
        settings=ControllerSettings(
            load_seconds=float(os.environ.get("MODELRAIL_LOAD_SECONDS", "10")),
            load_users=int(os.environ.get("MODELRAIL_LOAD_USERS", "4")),
            grpc_load=False))  # the load Job sends OIP REST


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The pod's service account in a cluster, else $KUBECONFIG (also one without
    credentials, such as a local API mock)."""
    return (kopf.login_with_service_account(**kwargs)
            or kopf.login_with_kubeconfig(**kwargs))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Logger,
              **_: Any) -> None:
    """kopf's settings, and the reconciler every timer uses."""
    settings.posting.level = logging.INFO  # decisions become Events
    settings.watching.server_timeout = 120
    # a namespaced Role cannot list namespaces: watch only the one given by --namespace
    settings.scanning.disabled = True
    # replicas peer on one KopfPeering (--peering); the highest priority acts, the others
    # wait. Equal priorities would pause them all, so each replica draws its own.
    settings.peering.priority = int(os.environ.get("MODELRAIL_PEERING_PRIORITY")
                                    or random.SystemRandom().randint(1, 2**30))
    memo["reconciler"] = reconciler_from_env(logger)


@kopf.timer(api.GROUP, api.VERSION, api.PLURAL, interval=INTERVAL, sharp=False)
def reconcile(body: kopf.Body, memo: Any, logger: Logger, **_: Any) -> None:
    """Event in → reconciler → Events out."""
    reconciler: Reconciler = memo["reconciler"]
    for kind, reason, message in reconciler.reconcile(dict(body)):
        kopf.event(body, type=kind, reason=reason, message=message)
        logger.info("%s %s: %s", kind, reason, message)
