"""`modelrail pulumi up|preview|refresh|destroy --stack S`: the real Pulumi CLI and provider.

    modelrail pulumi up --stack dev --kubeconfig .modelrail/cluster/admin.kubeconfig
    modelrail pulumi preview --stack dev --expect-no-changes     exit 1 if anything differs
    modelrail pulumi refresh --stack dev                          drift made by hand, recorded
    modelrail pulumi destroy --stack dev

The program runs inline through the Automation API (modelrail.infra.deploy): the CLI built
by scripts/upstream/build.sh has no Python language host here. State goes to a local file
backend (--backend, default ./.modelrail/pulumi); nothing is fetched from the network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from modelrail.cli.output import add_output_flag, print_json


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pulumi", help="pulumi up|preview|refresh|destroy a stack, for real")
    psub = p.add_subparsers(dest="pulumi_command", required=True, metavar="ACTION")
    for name, text in (("up", "create or update the stack's resources"),
                       ("preview", "show what `up` would change"),
                       ("refresh", "read the cluster's state into the stack (drift)"),
                       ("destroy", "delete every resource of the stack")):
        q = psub.add_parser(name, help=text)
        q.add_argument("--stack", required=True, help="dev, staging, prod (Pulumi.<stack>.yaml)")
        q.add_argument("--project", type=Path, default=Path("."),
                       help="folder holding Pulumi.yaml (default: .)")
        q.add_argument("--kubeconfig", type=Path,
                       default=Path(".modelrail/cluster/admin.kubeconfig"),
                       help="the cluster (default: the one `modelrail cluster up` wrote)")
        q.add_argument("--backend", type=Path, default=Path(".modelrail/pulumi"),
                       help="the local file backend's folder")
        q.add_argument("--quiet", action="store_true", help="no Pulumi progress output")
        if name == "preview":
            q.add_argument("--expect-no-changes", action="store_true",
                           help="fail if the preview shows any change")
        add_output_flag(q)
        q.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from modelrail.infra import deploy

    target = deploy.Target(project=args.project, stack=args.stack,
                           kubeconfig=args.kubeconfig, backend=args.backend)
    echo = None if args.quiet or args.output == "json" else (
        lambda line: print(line, end="" if line.endswith("\n") else "\n", file=sys.stderr))
    if args.pulumi_command == "up":
        result: Any = deploy.up(target, on_output=echo)
    elif args.pulumi_command == "preview":
        result = deploy.preview(target, expect_no_changes=args.expect_no_changes,
                                on_output=echo)
    elif args.pulumi_command == "refresh":
        result = deploy.refresh(target, on_output=echo)
    else:
        result = deploy.destroy(target, on_output=echo)
    if args.output == "json":
        print_json(result)
    else:
        print(f"{args.pulumi_command} {args.stack}: {result}")
    return 0
