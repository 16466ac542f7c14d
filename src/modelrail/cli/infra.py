"""`modelrail render` and `modelrail env diff|parity`: the infrastructure without a cluster.

render   writes a stack's Kubernetes objects as YAML (kubectl / GitOps), no Pulumi CLI needed
env      diff two environments object by object and field by field; `parity` checks that all
         stacks differ only in configured values (exit 8 on drift); `up|status|down` run an
         environment locally (cli/localenv.py)
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import yaml

from modelrail.cli import localenv
from modelrail.cli.output import add_output_flag, print_json
from modelrail.durable import atomic_write_text
from modelrail.exit_codes import ExitCode

DRIFT_EXIT = ExitCode.DRIFT


def _project(q: argparse.ArgumentParser) -> None:
    q.add_argument("--project", type=Path, default=Path("."),
                   help="folder holding Pulumi.yaml and Pulumi.<stack>.yaml (default: .)")


def add_parser(sub: Any) -> None:
    r = sub.add_parser("render", help="write a stack's Kubernetes manifests as YAML")
    r.add_argument("--stack", required=True, help="dev, staging, prod, … (Pulumi.<stack>.yaml)")
    r.add_argument("-o", "--output-dir", type=Path, default=None,
                   help="write one file per object here (default: one YAML stream on stdout)")
    _project(r)
    r.set_defaults(handler=_render)

    env = sub.add_parser("env", help="environments: local up/status/down, diff and parity")
    esub = env.add_subparsers(dest="env_command", required=True, metavar="ACTION")
    localenv.add_actions(esub)
    d = esub.add_parser("diff", help="how two environments differ, field by field")
    d.add_argument("a")
    d.add_argument("b")
    _project(d)
    add_output_flag(d)
    d.set_defaults(handler=_diff)
    p = esub.add_parser("parity", help="check every stack differs only in configured values")
    _project(p)
    p.set_defaults(handler=_parity)


def _render(args: argparse.Namespace) -> int:
    from modelrail.infra.config import load_stack
    from modelrail.infra.manifests import render

    objs = render(load_stack(args.stack, args.project))
    if args.output_dir is None:
        print(yaml.safe_dump_all(objs, sort_keys=False), end="")
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objs):
        name = f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        atomic_write_text(args.output_dir / name, yaml.safe_dump(obj, sort_keys=False))
    print(f"wrote {len(objs)} objects to {args.output_dir}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from modelrail.infra.config import load_stack
    from modelrail.infra.parity import diff, format_diff, unexplained

    diffs = diff(load_stack(args.a, args.project), load_stack(args.b, args.project))
    if args.output == "json":
        print_json([{"object": d.obj, "path": d.path, args.a: d.a, args.b: d.b,
                     "configured_by": d.explained_by} for d in diffs])
    else:
        print(format_diff(args.a, args.b, diffs))
    return DRIFT_EXIT if unexplained(diffs) else 0


def _parity(args: argparse.Namespace) -> int:
    from modelrail.infra.config import load_stack
    from modelrail.infra.parity import diff, unexplained

    stacks = sorted(p.name.split(".")[1] for p in args.project.glob("Pulumi.*.yaml"))
    configs = {s: load_stack(s, args.project) for s in stacks}
    failed = False
    for a, b in itertools.pairwise(stacks):
        bad = unexplained(diff(configs[a], configs[b]))
        for d in bad:
            print(f"DRIFT {a} vs {b}: {d.obj} {d.path or '(object)'}: {d.a!r} -> {d.b!r}")
        print(f"{a} vs {b}: {'parity holds' if not bad else f'{len(bad)} unexplained'}")
        failed = failed or bool(bad)
    return DRIFT_EXIT if failed else 0
