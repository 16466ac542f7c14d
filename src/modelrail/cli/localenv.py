"""`modelrail env up|status|down ENV`: a local environment as real processes.

up      validate the stack file, check its models are registered, start the environment's
        controller in the background (rollout/local/daemon.py) and wait until every stable
        instance is ready; idempotent (an environment already up is left alone; one whose
        controller died is adopted, rollouts resume)
status  the controller, the proxy's endpoints, each model's stable and canary tracks, and
        any rollout whose files cannot be read (on stderr, and as `unreadable_rollouts` in
        -o json); the exit code is about the environment (0 Ready, 12 not up): an unreadable
        rollout is isolated by the controller and does not make the environment fail
down    abort running rollouts (traffic back to stable) and stop everything
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from modelrail.cli.output import add_output_flag, print_json, table
from modelrail.errors import InvalidInputError, ModelrailError

UP_TIMEOUT = 240.0


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where local environments keep their state "
                        "(default: $MODELRAIL_STATE_DIR or ./.modelrail/envs)")


def add_actions(esub: Any) -> None:
    up = esub.add_parser("up", help="start a local environment (stable models from its stack)")
    up.add_argument("env", metavar="ENV")
    up.add_argument("--project", type=Path, default=Path("."),
                    help="folder holding Pulumi.<ENV>.yaml (default: .)")
    up.add_argument("--models", default="",
                    help="comma-separated subset of the stack's models (default: all)")
    up.add_argument("--max-replicas", type=int, default=None,
                    help="cap the stack's autoscaling bounds on a small machine")
    up.add_argument("--target-in-flight", type=float, default=2.0,
                    help="autoscaling target: requests in flight per worker (default: 2)")
    up.add_argument("--registry", default=None, help="model registry (default: "
                                                     "$MODELRAIL_REGISTRY)")
    up.add_argument("--runtime", choices=("process", "container"), default="process",
                    help="run each instance as a process (default, fastest) or as a "
                         "container of the inference image, as the stack's Deployment "
                         "says (podman+runc; the image is built or found first)")
    up.add_argument("--timeout", type=float, default=UP_TIMEOUT)
    add_common(up)
    add_output_flag(up)
    up.set_defaults(handler=_up)

    st = esub.add_parser("status", help="show a local environment")
    st.add_argument("env", metavar="ENV")
    add_common(st)
    add_output_flag(st)
    st.set_defaults(handler=_status)

    down = esub.add_parser("down", help="stop a local environment")
    down.add_argument("env", metavar="ENV")
    down.add_argument("--timeout", type=float, default=90.0)
    add_common(down)
    down.set_defaults(handler=_down)


def _up(args: argparse.Namespace) -> int:
    from modelrail.infra.config import load_stack
    from modelrail.models.registry import parse_registry_flag
    from modelrail.rollout.local.store import EnvStore

    store = EnvStore(args.env, args.state_dir)
    config = load_stack(args.env, args.project)  # invalid stack: exit 2 before anything runs
    wanted = [m for m in args.models.split(",") if m]
    known = [m.name for m in config.models]
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise InvalidInputError(f"model {unknown[0]!r} is not in stack {args.env}",
                                where="--models", accepted=", ".join(known))
    if args.max_replicas is not None and args.max_replicas < 1:
        raise InvalidInputError(f"--max-replicas {args.max_replicas}", where="--max-replicas",
                                accepted="an integer >= 1")
    if not 0 < args.target_in_flight <= 1000:
        raise InvalidInputError(f"--target-in-flight {args.target_in_flight}",
                                where="--target-in-flight", accepted="a number in (0, 1000]")
    registry = parse_registry_flag(args.registry)
    for m in config.models:
        if not wanted or m.name in wanted:
            card = registry.get(m.name, m.version)
            if m.sha256 and card.sha256 != m.sha256:
                raise InvalidInputError(
                    f"{m.name}:{m.version} is pinned to sha256 {m.sha256} in "
                    f"Pulumi.{args.env}.yaml but the registry holds {card.sha256}",
                    where=f"Pulumi.{args.env}.yaml", accepted="the registered sha256")
    if store.daemon_alive() and (store.read_env() or {}).get("phase") == "Ready":
        print(f"environment {args.env} is already up")
        return _status(args)
    image = _image_for(args, registry, [m.name for m in config.models
                                        if not wanted or m.name in wanted])
    store.root.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "modelrail.rollout.local.daemon", "--env", args.env,
            "--project", str(args.project.resolve()), "--state-dir",
            str(store.root.parent.resolve()), "--models", ",".join(wanted),
            "--target-in-flight", str(args.target_in_flight)]
    if args.max_replicas:
        argv += ["--max-replicas", str(args.max_replicas)]
    if image:
        argv += ["--image", image]
    env = {**os.environ, "MODELRAIL_REGISTRY": str(registry.root.resolve()),
           "ORT_DISABLE_TELEMETRY": "1", "BENTOML_DO_NOT_TRACK": "true"}
    with store.log_file.open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        info = store.read_env() or {}
        if info.get("pid") == proc.pid and info.get("phase") == "Ready":
            break
        if proc.poll() is not None:
            raise ModelrailError(f"environment {args.env} failed to start: "
                                 f"{(store.read_env() or {}).get('message', 'see the log')}",
                                 where=str(store.log_file))
        time.sleep(0.2)
    else:
        raise ModelrailError(f"environment {args.env} not ready within {args.timeout:.0f}s "
                             "(it keeps starting in the background)", where=str(store.log_file),
                             accepted=f"check: modelrail env status {args.env}")
    return _status(args)


def _image_for(args: argparse.Namespace, registry: Any, models: list[str]) -> str | None:
    """For `--runtime container`: the inference image of every registered version of the
    environment's models (a rollout may move to any of them), built or found by content."""
    if args.runtime != "container":
        return None
    from modelrail.images.build import build_inference
    from modelrail.serving.config import ModelRef

    refs = [ModelRef(c.name, c.version, c.sha256) for c in registry.list()
            if c.name in models]
    built = build_inference(refs)
    out = sys.stderr if getattr(args, "output", "text") == "json" else sys.stdout
    print(f"{'built' if built.built else 'found'} {built.ref} with "
          f"{', '.join(m.tag for m in built.models)}", file=out)
    return built.ref


def _status(args: argparse.Namespace) -> int:
    from modelrail.rollout.local.store import EnvironmentDownError, EnvStore

    store = EnvStore(args.env, args.state_dir)
    info = store.read_env()
    alive = store.daemon_alive()
    unreadable = store.unreadable()
    bad = {r.id for r, _ in unreadable}
    if getattr(args, "output", "text") == "json":
        print_json({**(info or {"env": args.env, "phase": "Down"}), "controller_alive": alive,
                    "rollouts": [_rollout_brief(r) for r in store.rollouts()[-10:]
                                 if r.id not in bad],
                    "unreadable_rollouts": [{"id": r.id, **exc.to_dict()}
                                            for r, exc in unreadable]})
    elif info is None:
        print(f"environment {args.env}: not up (start it with: modelrail env up {args.env})")
    else:
        state = info["phase"] if alive else f"{info['phase']} (controller not running)"
        print(f"environment {args.env}: {state}")
        if alive:
            grpc = "  ".join(f"{m}={a}" for m, a in (info.get("grpc") or {}).items())
            print(f"  HTTP {info['http']}  proxy API {info['proxy_api']}  gRPC {grpc}")
        rows = [(name, m["stable"] or "-", str(m["stable_instances"]), m["canary"] or "-",
                 str(m["canary_instances"]), f"{m['canary_weight']}%")
                for name, m in info.get("models", {}).items()]
        if rows:
            print(table(("MODEL", "STABLE", "N", "CANARY", "N", "CANARY WEIGHT"), rows))
        for r in store.active():
            if r.id in bad:
                continue
            b = _rollout_brief(r)
            print(f"  rollout {b['id']}: {b['phase']} at {b['weight']}% — {b['message']}")
    if getattr(args, "output", "text") != "json":
        for r, exc in unreadable:
            print(f"modelrail: error: rollout {r.id} is unreadable, the controller skips it: "
                  f"{exc}", file=sys.stderr)
    if not alive or (info or {}).get("phase") != "Ready":
        return EnvironmentDownError.exit_code
    return 0


def _rollout_brief(files: Any) -> dict[str, Any]:
    keep = ("id", "model", "stable", "canary", "phase", "weight", "message")
    return {k: v for k, v in files.summary().items() if k in keep}


def _down(args: argparse.Namespace) -> int:
    from modelrail.rollout.local.daemon import adopt_plane
    from modelrail.rollout.local.store import EnvStore, write_json

    store = EnvStore(args.env, args.state_dir)
    info = store.read_env()
    if info is None and not store.plane_file.exists():
        print(f"environment {args.env} is not up")
        return 0
    if store.daemon_alive() and info is not None:
        pid = int(info["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while store.daemon_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if store.daemon_alive():
            os.kill(pid, signal.SIGKILL)
    if store.plane_file.exists():  # the controller was dead: stop what it left running
        adopt_plane(store, start_router=False).stop()
        store.plane_file.unlink()
        write_json(store.env_file, {**(info or {}), "env": args.env, "pid": None,
                                    "phase": "Stopped", "message": "stopped by env down"})
    print(f"environment {args.env} is down")
    return 0
