"""The `modelrail` command: argument parsing, error reporting and exit codes.

Each command group lives in its own module (model.py, demo.py, …) exposing
`add_parser(subparsers)`; handlers return an exit code. Errors derived from
`ModelrailError` print as one actionable message and exit with that error's code:
  0 ok · 1 unexpected failure · 2 invalid input or not found · 3 conversion error ·
  4 parity gate failed · 5 version conflict · 6 integrity (a sha256 mismatch, or a stored
  file torn or corrupt: CorruptStateError) · 7 packaging (wheel or bentoml build) failed ·
  8 environments drift apart ·
  9 rollout rolled back · 10 rollout timed out · 11 rollout aborted · 12 environment not up ·
  13 an image build or the container runtime failed
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelrail import __version__
from modelrail.cli import bento, cluster, demo, image, infra, model, pulumi, rollout, serve
from modelrail.errors import ModelrailError

GROUPS = (model, serve, bento, image, cluster, infra, pulumi, rollout, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelrail",
        description="Ship scikit-learn models to production on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"modelrail {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except ModelrailError as exc:
        print(f"modelrail: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("modelrail: interrupted", file=sys.stderr)
        return 130
    return code
