"""`modelrail rollout start|status|promote|abort|history|report`: canary rollouts from CI.

start    checks the request (environment up, model served there, version registered, no
         rollout of that model running, policy overrides valid), writes it for the
         environment's controller and, with --wait, follows it to the end; the exit code is
         the verdict
status   where the latest rollout (of --model, or --id) stands; --watch follows it
promote  pass a manual gate; abort: traffic back to stable now
history  the audit trail: every decision with its evidence
report   a self-contained HTML page with charts (viewable offline)

With --kube the same commands act on the ModelRollout in a cluster (cli/kube.py).

Exit codes: 0 promoted · 9 rolled back · 10 timed out (progress deadline, or --timeout while
waiting) · 11 aborted · 2 invalid input · 12 environment not up · 6 a state file of the
rollout is torn or corrupt (the message names it and how to repair it; `report --all`
still writes the readable rollouts). Followers (--watch, --wait) retry an unreadable read
for READ_GRACE_SECONDS before giving up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from modelrail.cli import kube as kube_cli
from modelrail.cli.localenv import add_common
from modelrail.cli.output import add_output_flag, print_json, table
from modelrail.errors import CorruptStateError, InvalidInputError
from modelrail.exit_codes import ExitCode
from modelrail.rollout import api

# a follower meeting a file it cannot read retries this long before calling it corrupt: it
# may be a copy being restored, a disk hiccup, or a writer on a file system without
# atomic rename
READ_GRACE_SECONDS = 5.0
T = TypeVar("T")


def add_parser(sub: Any) -> None:
    r = sub.add_parser("rollout", help="canary rollouts on a local environment")
    rsub = r.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")

    s = rsub.add_parser("start", help="canary a model version in an environment")
    _env(s)
    s.add_argument("--model", required=True, metavar="NAME:VERSION",
                   help="the candidate version (the stable one is what the env serves)")
    s.add_argument("--wait", action="store_true", help="follow it to the end; the exit "
                                                       "code is the verdict")
    s.add_argument("--timeout", type=float, default=3600.0,
                   help="with --wait: give up waiting after this many seconds (exit 10)")
    s.add_argument("--registry", default=None)
    s.add_argument("--sample", type=Path, default=None,
                   help="validation rows for the model gate and load (.npz split with "
                        "X_test, or JSON rows); default: the sample registered with it")
    s.add_argument("--steps", default=None, help="override the stack's weights, e.g. 10,50,100")
    s.add_argument("--step-seconds", type=int, default=None,
                   help="override how long each step must hold (pace a demo or a test)")
    s.add_argument("--progress-deadline", type=int, default=None,
                   help="override the progress deadline in seconds")
    s.add_argument("--interval", type=float, default=3.0,
                   help="seconds of Locust load per analysis interval (default: 3)")
    s.add_argument("--load-users", type=int, default=2)
    s.add_argument("--no-pre-traffic", action="store_true",
                   help="skip the analysis of the ready canary (load straight at it, model "
                        "gate) before it takes user traffic")
    s.add_argument("--no-shadow", action="store_true",
                   help="skip the stack's shadow phase (rollout.shadow) for this rollout")
    s.add_argument("--no-grpc-load", action="store_true",
                   help="drive REST load only (default: REST via the proxy + gRPC at the "
                        "canary)")
    s.set_defaults(handler=_start)

    st = rsub.add_parser("status", help="where a rollout stands")
    _env(st)
    _which(st)
    st.add_argument("--watch", action="store_true", help="follow it to the end")
    st.add_argument("--timeout", type=float, default=3600.0)
    st.set_defaults(handler=_status)

    for name, helptext in (("promote", "pass the manual gate a rollout is paused at"),
                           ("abort", "stop a rollout: traffic back to stable, canary removed")):
        c = rsub.add_parser(name, help=helptext)
        _env(c)
        _which(c)
        c.set_defaults(handler=_command, command=name)

    h = rsub.add_parser("history", help="the audit trail of a rollout (or all, with --all)")
    _env(h, kube=False)
    _which(h)
    h.add_argument("--all", action="store_true", help="every rollout of the environment")
    h.set_defaults(handler=_history)

    rp = rsub.add_parser("report", help="write a self-contained HTML report")
    _env(rp, kube=False)
    _which(rp)
    rp.add_argument("--all", action="store_true", help="every rollout of the environment")
    rp.add_argument("--out", type=Path, default=None,
                    help="file to write (default: <state-dir>/<env>/report.html)")
    rp.set_defaults(handler=_report)


def _env(p: argparse.ArgumentParser, kube: bool = True) -> None:
    p.add_argument("--env", metavar="ENV", help="the local environment (not with --kube)")
    add_common(p)
    add_output_flag(p)
    if kube:
        kube_cli.add_flags(p)


def _need_env(args: argparse.Namespace) -> None:
    if not args.env:
        raise InvalidInputError("--env is required", where="arguments",
                                accepted="--env ENV for a local environment, or --kube "
                                         "[--namespace NS] for a cluster")


def _which(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="NAME",
                   help="the latest rollout of this model (default: the latest of any)")
    p.add_argument("--id", default=None, type=_rollout_id,
                   help="a rollout id (from start or status)")


def _rollout_id(value: str) -> str:
    from modelrail.rollout.local.store import check_rollout_id

    try:
        return check_rollout_id(value)
    except InvalidInputError as exc:  # argparse reports it as a usage error (exit 2)
        raise argparse.ArgumentTypeError(f"{exc.what}; accepted: {exc.accepted}") from None


# --- start ---------------------------------------------------------------------------------
def _start(args: argparse.Namespace) -> int:
    from modelrail.infra.config import load_stack
    from modelrail.models.card import parse_ref
    from modelrail.models.registry import parse_registry_flag
    from modelrail.rollout.core.spec import RolloutSpec
    from modelrail.rollout.local.store import EnvStore, write_json

    name, version = parse_ref(args.model)
    if getattr(args, "kube", False):
        return kube_cli.start(args, name, version)
    _need_env(args)
    store = EnvStore(args.env, args.state_dir)
    info = store.require_up()
    served = info.get("models", {})
    if name not in served:
        raise InvalidInputError(f"model {name!r} is not served in environment {args.env}",
                                where="--model", accepted=", ".join(served) or "none")
    stable = str(served[name]["stable"]).split("@")[0].split(":", 1)[1]
    if version == stable:
        raise InvalidInputError(f"{name}:{version} is already the stable version in "
                                f"{args.env}", where="--model",
                                accepted="a different registered version")
    running = store.active(name)
    if running:
        raise InvalidInputError(f"a rollout of {name} is already running: {running[0].id}",
                                where=args.env, accepted="wait for it to end, or: modelrail "
                                f"rollout abort --env {args.env} --model {name}")
    registry = parse_registry_flag(args.registry)
    card = registry.get(name, version)
    registry.get(name, stable)
    policy = _policy(args, load_stack(args.env, Path(info["project"])).rollout)
    if not 0.5 <= args.interval <= 300 or not 1 <= args.load_users <= 64:
        raise InvalidInputError(f"--interval {args.interval} / --load-users "
                                f"{args.load_users}", where="start flags",
                                accepted="--interval 0.5..300 seconds, --load-users 1..64")
    rows = _sample(args.sample, registry, name, version, stable, card.inputs[0].shape[-1])
    spec = replace(RolloutSpec.from_policy(policy, model=name, stable_version=stable,
                                           canary_version=version),
                   pre_traffic_analysis=not args.no_pre_traffic)
    if args.no_shadow:
        spec = replace(spec, shadow=None)
    files = store.new_rollout(name, version)
    write_json(files.sample, {"rows": rows})
    write_json(files.request, {
        "id": files.id, "env": args.env, "spec": spec.to_dict(), "task": card.task,
        "created_at": time.time(),
        "options": {"interval": args.interval, "load_users": args.load_users,
                    "grpc_load": not args.no_grpc_load}})
    deadline = time.monotonic() + 20
    while _patiently(files.read_status) is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the controller picks a request up within a second
    if args.output == "text":
        print(f"rollout {files.id}: {name} {stable} -> {version} in {args.env}, steps "
              f"{list(spec.steps)}, {spec.step_seconds:g}s each")
    if not args.wait:
        if args.output == "json":
            print_json(_summary(files))
        return 0
    return _follow(files, args.output, args.timeout)


def _policy(args: argparse.Namespace, base: Any) -> Any:
    """The stack's rollout policy with this run's overrides, validated by the same rules."""
    from modelrail.rollout.core.policy import RolloutPolicy

    overrides: dict[str, Any] = {}
    if args.steps is not None:
        try:
            overrides["steps"] = [int(w) for w in args.steps.split(",")]
        except ValueError:
            raise InvalidInputError(f"--steps {args.steps!r}", where="--steps",
                                    accepted="comma-separated weights 1..100, increasing") from None
        overrides["manual_gates"] = [g for g in base.manual_gates if g in overrides["steps"]]
    if args.step_seconds is not None:
        overrides["step_seconds"] = args.step_seconds
        overrides["analysis_interval_seconds"] = min(base.analysis_interval_seconds,
                                                     args.step_seconds)
    if args.progress_deadline is not None:
        overrides["progress_deadline_seconds"] = args.progress_deadline
    try:
        return RolloutPolicy.model_validate({**base.model_dump(), **overrides})
    except ValueError as exc:
        raise InvalidInputError(f"rollout override rejected: {exc}", where="start flags",
                                accepted="see Pulumi.dev.yaml's modelrail:rollout ranges"
                                ) from None


def _sample(path: Path | None, registry: Any, name: str, version: str, stable: str,
            features: int) -> list[list[float]]:
    import numpy as np

    from modelrail.errors import NotFoundError

    if path is None:
        try:
            return list(registry.sample(name, version))
        except NotFoundError:
            return list(registry.sample(name, stable))
    if not path.is_file():
        raise InvalidInputError(f"no such file {path}", where="--sample",
                                accepted="an .npz split (X_test) or a JSON list of rows")
    try:
        if path.suffix == ".npz":
            arr = np.load(path, allow_pickle=False)["X_test"]
        else:
            data = json.loads(path.read_text())
            arr = np.asarray(data["rows"] if isinstance(data, dict) else data, dtype=float)
    except (KeyError, ValueError, OSError) as exc:
        raise InvalidInputError(f"unreadable sample: {exc}", where=str(path),
                                accepted="an .npz split with X_test, or JSON [[…], …] / "
                                         "{\"rows\": [[…], …]}") from None
    if arr.ndim != 2 or arr.shape[1] != features or arr.shape[0] == 0:
        raise InvalidInputError(f"sample has shape {list(arr.shape)}", where=str(path),
                                accepted=f"a non-empty 2-D array of {features} features")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("sample holds NaN or infinity", where=str(path),
                                accepted="finite numbers")
    return [[float(v) for v in r] for r in arr[:256]]


# --- following ---------------------------------------------------------------------------
def _summary(files: Any) -> dict[str, Any]:
    summary: dict[str, Any] = files.summary()
    done = summary.pop("done")
    summary["exit_code"] = api.exit_code_of(summary["phase"]) if done else None
    return summary


def _patiently(read: Callable[[], T]) -> T:
    """`read()`, retried for READ_GRACE_SECONDS while it meets an unreadable file; after
    that the CorruptStateError (naming the file and the repair) stands."""
    give_up = time.monotonic() + READ_GRACE_SECONDS
    while True:
        try:
            return read()
        except CorruptStateError:
            if time.monotonic() >= give_up:
                raise
            time.sleep(0.2)


def _follow(files: Any, output: str, timeout: float) -> int:
    started = time.monotonic()
    last = None
    code: int
    while True:
        summary = _patiently(lambda: _summary(files))
        line = (summary["phase"], summary["weight"], summary["message"])
        if output == "text" and line != last:
            print(f"[{time.monotonic() - started:6.1f}s] {summary['phase']:<12} canary "
                  f"{summary['weight']:>3}%  {summary['message']}", flush=True)
            last = line
        if summary["exit_code"] is not None:
            code = int(summary["exit_code"])
            break
        if time.monotonic() - started > timeout:
            code = summary["exit_code"] = ExitCode.TIMED_OUT
            summary["message"] = f"still {summary['phase']} after waiting {timeout:.0f}s"
            break
        time.sleep(0.5)
    if output == "json":
        print_json(summary)
    else:
        verdict = {ExitCode.OK: "PROMOTED", ExitCode.ROLLED_BACK: "ROLLED BACK",
                   ExitCode.TIMED_OUT: "TIMED OUT", ExitCode.ABORTED: "ABORTED"}[ExitCode(code)]
        print(f"{verdict}: {summary['model']} {summary['canary']} "
              f"({summary['message']}) exit {code}")
    return code


def _status(args: argparse.Namespace) -> int:
    from modelrail.rollout.core.analysis import describe_shadow
    from modelrail.rollout.local.store import EnvStore

    if args.kube:
        return kube_cli.status(args)
    _need_env(args)
    files = EnvStore(args.env, args.state_dir).find(args.id, args.model)
    if args.watch:
        return _follow(files, args.output, args.timeout)
    summary = _summary(files)
    if args.output == "json":
        print_json(summary)
    else:
        print(f"rollout {summary['id']}: {summary['model']} {summary['stable']} -> "
              f"{summary['canary']}: {summary['phase']} at {summary['weight']}% — "
              f"{summary['message']}")
        shadow = describe_shadow(summary.get("shadow"))
        if shadow:
            print(f"  {shadow}")
    return int(summary["exit_code"] or 0)


def _command(args: argparse.Namespace) -> int:
    from modelrail.rollout.core.spec import Phase
    from modelrail.rollout.local.store import EnvStore, append_jsonl

    if args.kube:
        return kube_cli.command(args)
    _need_env(args)
    store = EnvStore(args.env, args.state_dir)
    files = store.find(args.id, args.model)
    st = files.rollout_status()
    if st is not None and st.phase.terminal:
        raise InvalidInputError(f"rollout {files.id} already ended ({st.phase.value})",
                                where="--id/--model", accepted="a running rollout")
    if args.command == "promote" and (st is None or st.phase is not Phase.PAUSED):
        raise InvalidInputError(
            f"rollout {files.id} is {st.phase.value if st else 'Pending'}, not paused at a "
            "manual gate", where="promote",
            accepted="promote passes a manual gate (manualGates in the stack's rollout "
                     "policy); analysis moves the other steps")
    store.require_up()
    # a promote names the pause it answers (the status seq): a late or repeated one can
    # never pass a later gate
    append_jsonl(files.commands, {"command": args.command, "at": time.time(),
                                  "seq": st.seq if st else 0})
    print(f"{args.command} requested for rollout {files.id}", file=sys.stderr)
    if args.output == "json":
        print_json({"id": files.id, "command": args.command})
    return 0


# --- history and report ------------------------------------------------------------------
def _history(args: argparse.Namespace) -> int:
    from modelrail.rollout.local.store import EnvStore, read_jsonl

    _need_env(args)
    store = EnvStore(args.env, args.state_dir)
    ids = None if args.all else {store.find(args.id, args.model).id}
    entries, bad = [], 0
    for e in read_jsonl(store.audit_file):
        if not _audit_entry_ok(e):
            bad += 1
        elif ids is None or e["rollout"] in ids:
            entries.append(e)
    if bad:
        print(f"modelrail: warning: {bad} line(s) of {store.audit_file} have the wrong shape "
              "and were left out", file=sys.stderr)
    if args.output == "json":
        print_json(entries)
        return 0
    rows = [(time.strftime("%H:%M:%S", time.localtime(e["at"])), e["rollout"][16:],
             f"{e['from']}->{e['to']}" if e["from"] != e["to"] else e["to"], e["action"],
             f"{e['weight']}%", _evidence(e), e["message"][:70]) for e in entries]
    print(table(("TIME", "ROLLOUT", "PHASE", "ACTION", "WEIGHT", "EVIDENCE", "MESSAGE"), rows))
    if entries:
        e = entries[-1]
        print(f"stable {e['model']}:{e['stable']['version']} sha256 {e['stable']['sha256']}")
        print(f"canary {e['model']}:{e['canary']['version']} sha256 {e['canary']['sha256']}")
    return 0


def _audit_entry_ok(e: dict[str, Any]) -> bool:
    """An audit line has what `history` prints (written by store.AuditJournal)."""
    text = ("rollout", "from", "to", "action", "message", "model")
    return (all(isinstance(e.get(k), str) for k in text)
            and isinstance(e.get("at"), int | float) and isinstance(e.get("weight"), int)
            and all(isinstance(e.get(t), dict) and isinstance(e[t].get("version"), str)
                    for t in ("stable", "canary"))
            and isinstance(e.get("measurements") or {}, dict)
            and isinstance(e.get("checks") or [], list))


def _evidence(e: dict[str, Any]) -> str:
    m = e.get("measurements") or {}
    parts = []
    if m.get("canary"):
        c = m["canary"]
        parts.append(f"canary {c['errors']}/{c['requests']} err")
    if m.get("gate"):
        parts.append(f"gate {m['gate']['disagreements']}/{m['gate']['compared']}")
    if m.get("load"):
        parts.append(f"load {m['load']['failures']}/{m['load']['requests']}")
    if m.get("shadow_total"):
        t = m["shadow_total"]
        parts.append(f"shadow {t['disagreements']}/{t['pairs']} differ, "
                     f"{t['dropped']} dropped")
    failed = [c["name"] for c in e.get("checks", []) if c["status"] == "FAIL"]
    if failed:
        parts.append("FAIL " + ",".join(failed))
    return " ".join(parts) or "-"


def _report(args: argparse.Namespace) -> int:
    from modelrail.rollout.local.report import write_report
    from modelrail.rollout.local.store import EnvStore

    _need_env(args)
    store = EnvStore(args.env, args.state_dir)
    rollouts = store.rollouts() if args.all else [store.find(args.id, args.model)]
    problems = {r.id: p for r in rollouts if (p := r.problem()) is not None}
    if not args.all and problems:
        raise next(iter(problems.values()))  # the one rollout asked for cannot be read
    out = args.out or store.root / "report.html"
    write_report(out, [(store, r) for r in rollouts], title=f"modelrail rollouts — {args.env}")
    readable = [r.id for r in rollouts if r.id not in problems]
    if args.output == "json":
        print_json({"report": str(out), "rollouts": readable,
                    "unreadable": [{"id": rid, **p.to_dict()} for rid, p in problems.items()]})
    else:
        print(f"wrote {out} ({len(readable)} rollout{'s' if len(readable) != 1 else ''})")
    for p in problems.values():
        print(f"modelrail: error: rollout unreadable (so marked in the report): {p}",
              file=sys.stderr)
    return CorruptStateError.exit_code if problems else 0
