"""Runs the real Pulumi program under Pulumi's own mock runtime and records what it declares.

Config is handed over as the Pulumi CLI does: every `modelrail:*` value of the stack file,
structured values JSON-encoded, scalars as strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Declared:
    typ: str
    name: str
    inputs: dict[str, Any]
    urn: str = ""


# what the program reads of the Gateway the stack names (program.LiveGateway): the
# listeners and address of the local cluster's (cluster/gateway.py)
GATEWAY_STATE = {
    "spec": {"gatewayClassName": "traefik", "listeners": [
        {"name": "web", "port": 8000, "protocol": "HTTP",
         "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}]}},
        {"name": "grpc", "port": 8001, "protocol": "HTTP",
         "allowedRoutes": {"kinds": [{"kind": "GRPCRoute"}]}}]},
    "status": {"addresses": [{"type": "IPAddress", "value": "10.96.0.80"}]},
}


@dataclass
class Recorder(pulumi.runtime.Mocks):
    resources: list[Declared] = field(default_factory=list)
    reads: list[Declared] = field(default_factory=list)  # existing objects read, not owned

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if args.resource_id:  # a read (`get`) of an object the stack does not own
            self.reads.append(Declared(args.typ, args.name, dict(args.inputs)))
            return args.resource_id, GATEWAY_STATE if args.typ.endswith(":Gateway") else {}
        self.resources.append(Declared(args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        raise AssertionError(f"the program made an unexpected provider call: {args.token}")


def stack_values(stack: str, root: Path = ROOT) -> dict[str, str]:
    doc = yaml.safe_load((root / f"Pulumi.{stack}.yaml").read_text())
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in doc["config"].items()}


def run_program(stack: str, values: dict[str, str]) -> tuple[Recorder, dict[str, str]]:
    """Run modelrail.infra.program.main() for `stack`; return declared resources and URNs."""
    from modelrail.infra import program

    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, project="modelrail", stack=stack, preview=False)
    pulumi.runtime.set_all_config(values)
    urns: dict[str, str] = {}

    @pulumi.runtime.test  # type: ignore[misc]
    def go() -> Any:
        models = program.build(__import__("modelrail.infra.config",
                                          fromlist=["from_pulumi"]).from_pulumi(stack))
        children = [r for m in models.values() for r in m.resources.values()]
        return pulumi.Output.all(*[c.urn for c in children]).apply(
            lambda xs: urns.update({x.rsplit("::", 1)[-1]: x for x in xs}))

    go()
    return recorder, urns
