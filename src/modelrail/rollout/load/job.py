"""The Locust Job's entry point: one bounded load run, its summary as the termination
message (`/dev/termination-log`, read by the operator from the finished pod).

    python -m modelrail.rollout.load.job --protocol rest --target http://iris-canary:3000 \\
        --model iris --version 2 --seconds 10 --users 4

Rows come from MODELRAIL_LOAD_ROWS_JSON (the validation sample). The summary is small
(termination messages are capped at 4 KiB): requests, failures, p99.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from modelrail.rollout.load.locust import run_load


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="modelrail-loadjob")
    p.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    p.add_argument("--target", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", default=None)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--result", type=Path, default=Path("/dev/termination-log"))
    args = p.parse_args(argv)
    rows = json.loads(os.environ.get("MODELRAIL_LOAD_ROWS_JSON", "[]"))
    result = run_load(protocol=args.protocol, target=args.target, model=args.model,
                      rows=rows, version=args.version, users=args.users,
                      seconds=args.seconds)
    summary = {"requests": result.sample.requests, "failures": result.sample.failures,
               "p99_ms": result.p99_ms, "exit_code": result.exit_code}
    args.result.write_text(json.dumps(summary))
    print(json.dumps(summary))
    return 0 if result.sample.requests > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
