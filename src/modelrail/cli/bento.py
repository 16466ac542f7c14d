"""`modelrail bento build NAME:VERSION …`: package exact model versions as a Bento."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bento", help="package the inference service as a Bento")
    bsub = p.add_subparsers(dest="bento_command", required=True, metavar="ACTION")
    b = bsub.add_parser("build", help="build a Bento pinned to exact model versions (offline)")
    b.add_argument("models", nargs="+", metavar="NAME:VERSION[@sha256:HEX]")
    b.add_argument("--keep-context", type=Path, default=None,
                   help="write the build context here instead of a temporary folder")
    b.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from modelrail.serving.config import parse_model_ref
    from modelrail.serving.packaging import build_bento

    built = build_bento([parse_model_ref(m) for m in args.models],
                        keep_context=args.keep_context)
    print(f"built Bento {built.tag}")
    for m in built.models:
        print(f"  model {m}")
    print(f"  path  {built.path}")
    print(f"containerize with: bentoml containerize {built.tag}  "
          f"(ports: HTTP 3000, gRPC 8001; runs as a non-root user)")
    return 0
