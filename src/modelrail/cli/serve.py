"""`modelrail serve NAME:VERSION …`: run the inference service locally in the foreground."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from modelrail.errors import InvalidInputError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve registered models over OIP v2 (REST and gRPC)")
    p.add_argument("models", nargs="+", metavar="NAME:VERSION[@sha256:HEX]",
                   help="exact model versions to serve (registered, in BentoML's store)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address for both protocols (default 127.0.0.1)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024)
    p.add_argument("--service-dir", type=Path, default=None,
                   help="folder of service.py (default: services/inference of the checkout)")
    p.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from modelrail.serving.config import ServingConfig
    from modelrail.serving.process import server_command

    if args.http_port == args.grpc_port:
        raise InvalidInputError(f"HTTP and gRPC both on port {args.http_port}",
                                where="--http-port/--grpc-port", accepted="two distinct ports")
    env = {"MODELRAIL_MODELS": ",".join(args.models), "MODELRAIL_GRPC_PORT": str(args.grpc_port),
           "MODELRAIL_GRPC_HOST": args.host, "MODELRAIL_WORKERS": str(args.workers),
           "MODELRAIL_MAX_REQUEST_BYTES": str(args.max_request_bytes)}
    config = ServingConfig.from_env(env)  # validates every value before anything starts
    cmd = server_command(config, http_host=args.host, http_port=args.http_port,
                         service_dir=args.service_dir)
    print(f"serving {', '.join(str(m) for m in config.models)}: REST http://{args.host}:"
          f"{args.http_port}/v2  gRPC {args.host}:{args.grpc_port}", flush=True)
    os.chdir(cmd.cwd)
    os.execve(cmd.argv[0], cmd.argv, cmd.env)  # replaces this process: signals go to bentoml
