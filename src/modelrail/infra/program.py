"""The Pulumi program: read the stack configuration once, build the components, export.

`infra/__main__.py` calls `main()`; the tests call it under `pulumi.runtime.set_mocks`.
Configuration is validated completely before the first resource is declared.
"""

from __future__ import annotations

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
    pulumi.export("namespace", cfg.namespace)
    pulumi.export("environment", cfg.environment)
    pulumi.export("models", {m.name: {
        "version": m.version, "ref": m.ref,
        "http": f"https://{m.name}.{cfg.hostname}/v2/models/{m.name}",
        "grpc": f"{m.name}.{cfg.hostname}:443",
        "rollout": f"modelrollout/{m.name}"} for m in cfg.models})
    pulumi.export("ci_service_account", f"{cfg.namespace}/modelrail-ci")
    return models


def main() -> None:
    build(from_pulumi(pulumi.get_stack()))
