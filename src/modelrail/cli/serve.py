"""`modelrail serve NAME:VERSION …`: run the inference service locally in the foreground.

Every model is checked in BentoML's model store (where the server loads from) before
anything starts. The server then runs as a child of this command, which forwards Ctrl-C and
SIGTERM to it and, however it ends, leaves no worker and no private BentoML home behind;
the exit code is the server's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrail.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from modelrail.serving.config import ModelRef


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
    from modelrail.processes import run_in_foreground, server_command
    from modelrail.serving.config import ServingConfig

    if args.http_port == args.grpc_port:
        raise InvalidInputError(f"HTTP and gRPC both on port {args.http_port}",
                                where="--http-port/--grpc-port", accepted="two distinct ports")
    env = {"MODELRAIL_MODELS": ",".join(args.models), "MODELRAIL_GRPC_PORT": str(args.grpc_port),
           "MODELRAIL_GRPC_HOST": args.host, "MODELRAIL_WORKERS": str(args.workers),
           "MODELRAIL_MAX_REQUEST_BYTES": str(args.max_request_bytes)}
    config = ServingConfig.from_env(env)  # validates every value before anything starts
    check_servable(config.models)
    cmd = server_command(config, http_host=args.host, http_port=args.http_port,
                         service_dir=args.service_dir)
    print(f"serving {', '.join(str(m) for m in config.models)}: REST http://{args.host}:"
          f"{args.http_port}/v2  gRPC {args.host}:{args.grpc_port}", flush=True)
    return run_in_foreground(cmd)


def check_servable(refs: tuple[ModelRef, ...]) -> None:
    """Refuse a model the server could not load: absent from BentoML's model store (the
    error lists the registered versions), altered there, or pinned to another sha256."""
    from modelrail.models import bento_store
    from modelrail.models.registry import Registry
    from modelrail.processes import shared_bentoml_home

    for ref in refs:
        try:
            card, _ = bento_store.load(ref.tag)  # also re-hashes the stored bytes
        except NotFoundError:
            Registry().get(ref.name, ref.version)  # unregistered: says which versions are
            raise NotFoundError(
                f"{ref.tag} is registered but not in BentoML's model store, which the server "
                "loads from", where=str(shared_bentoml_home() / "models"),
                accepted="register it again without --no-bentoml, or set BENTOML_HOME to the "
                         "store that holds it") from None
        if ref.sha256 and ref.sha256 != card.sha256:
            raise InvalidInputError(
                f"{ref.tag} is pinned to sha256 {ref.sha256} but the stored model has "
                f"sha256 {card.sha256}", where="models argument",
                accepted=f"{ref.tag}@sha256:{card.sha256} (the registered one), or no pin")
