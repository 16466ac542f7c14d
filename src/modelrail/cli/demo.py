"""`modelrail demo`: the README's main job, end to end on this machine.

1. Train the example models (models/examples.yaml), register each through the conversion +
   parity gate, and verify every stored copy.
2. Walk iris through dev → staging → prod, each environment brought up from its own stack
   file (`env up`): version 2 is canaried and promoted under continuous Locust load
   (prod pauses at its manual gate; the demo passes it with `rollout promote`).
3. In prod, version 3 — fast, error-free and wrong (trained on shuffled labels) — is
   canaried and rolled back automatically by the model gate.
4. Print a summary, write the HTML report, bring the environments down.

The same commands a platform engineer and CI run (`env up`, `rollout start --wait`,
`rollout promote`, `rollout report`, `env down`), called in-process; the pace is quickened
with `--step-seconds` so the whole walk takes a few minutes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from modelrail.cli.model import DEFAULT_SPEC, DEFAULT_TRAIN_OUT, headline_metric, verify_or_raise
from modelrail.cli.output import table

ENVIRONMENTS = ("dev", "staging", "prod")
MODEL, GOOD, BAD = "iris", "2", "3"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the local end-to-end demo")
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_TRAIN_OUT)
    p.add_argument("--registry", default=None)
    p.add_argument("--project", type=Path, default=Path("."),
                   help="folder with Pulumi.<env>.yaml (default: .)")
    p.add_argument("--state-dir", type=Path, default=None)
    p.add_argument("--step-seconds", type=int, default=5,
                   help="how long each canary step holds (default 5: demo pace)")
    p.add_argument("--models-only", action="store_true",
                   help="stop after training and registering (no environments)")
    p.add_argument("--report", type=Path, default=Path(".modelrail/demo/report.html"))
    p.add_argument("--runtime", choices=("process", "container"), default="process",
                   help="instances as processes (default) or as containers of the real "
                        "inference image (podman+runc)")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    registry = _register(args)
    if args.models_only:
        return 0
    results = []
    try:
        for env in ENVIRONMENTS:
            results += _walk(args, env, registry, bad=env == "prod")
    finally:
        for env in ENVIRONMENTS:
            _cli(["env", "down", env, *_state(args)], quiet=True)
    print("\n== summary")
    print(table(("ENV", "ROLLOUT", "VERDICT", "EXPECTED", "SECONDS", "ROLLBACK AFTER",
                 "CLIENT REQUESTS", "FAILED"),
                [(r["env"], r["rollout"], r["verdict"], r["expected"], f"{r['seconds']:.0f}",
                  r["rollback_after"], str(r["requests"]), str(r["failures"]))
                 for r in results]))
    _write_report(args, results)
    ok = all(r["verdict"] == r["expected"] for r in results)
    print(f"== demo {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s; "
          f"report: {args.report}")
    return 0 if ok else 1


def _register(args: argparse.Namespace) -> Any:
    from modelrail.models.register import register_model
    from modelrail.models.registry import parse_registry_flag
    from modelrail.models.train import load_spec, train_all

    registry = parse_registry_flag(args.registry)
    started = time.monotonic()
    print(f"== training example models from {args.spec}")
    trained = train_all(load_spec(args.spec), args.work_dir)
    print(f"== registering {len(trained)} models in {registry.root} (parity gate on)")
    rows = []
    for t in trained:
        result = register_model(model_path=t.model_path, data_path=t.data_path, name=t.name,
                                version=t.version, registry=registry)
        card = result.card
        v = verify_or_raise(registry, card.name, card.version)
        p = card.parity
        rows.append((card.ref, card.estimator, card.sha256[:12], headline_metric(card),
                     f"{p.max_abs_diff:.1e}", f"{p.label_mismatches}/{p.rows}",
                     "new" if result.created else "existing",
                     "ok" + (" (+bentoml)" if v.bentoml_sha256 else "")))
    print(table(("MODEL", "ESTIMATOR", "SHA256", "METRIC", "MAX |DIFF|", "LABEL MISMATCH",
                 "REGISTERED", "VERIFIED"), rows))
    print(f"== {len(rows)} models registered and verified in {time.monotonic() - started:.1f}s")
    return registry


def _state(args: argparse.Namespace) -> list[str]:
    return ["--state-dir", str(args.state_dir)] if args.state_dir else []


def _cli(argv: list[str], *, quiet: bool = False) -> int:
    import contextlib
    import io

    from modelrail.cli import main

    if not quiet:
        print(f"$ modelrail {' '.join(argv)}", flush=True)
        return main(argv)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


def _walk(args: argparse.Namespace, env: str, registry: Any,
          *, bad: bool) -> list[dict[str, Any]]:
    from modelrail.rollout.load.locust import BackgroundLoad
    from modelrail.rollout.local.store import EnvStore

    print(f"\n== {env}: up from Pulumi.{env}.yaml, then {MODEL}:{GOOD} by canary")
    reg = ["--registry", str(registry.root)]
    # one model and at most two instances per track keep a 2-core machine responsive
    code = _cli(["env", "up", env, "--project", str(args.project), "--models", MODEL,
                 "--max-replicas", "2", "--runtime", args.runtime, *reg, *_state(args)])
    if code != 0:
        raise SystemExit(code)
    info = EnvStore(env, args.state_dir).read_env() or {}
    rows = registry.sample(MODEL, GOOD)
    out = []
    for version, expected in ((GOOD, "PROMOTED"), *(((BAD, "ROLLED BACK"),) if bad else ())):
        load = BackgroundLoad(protocol="rest", target=info["http"], model=MODEL, rows=rows,
                              users=2, wait=0.02, max_seconds=600)
        t0 = time.monotonic()
        code = _rollout(args, env, version, reg)
        result = load.stop()
        verdict = {0: "PROMOTED", 9: "ROLLED BACK", 10: "TIMED OUT", 11: "ABORTED"}.get(
            code, f"exit {code}")
        out.append({"env": env, "rollout": f"{MODEL} -> {version}", "verdict": verdict,
                    "expected": expected, "seconds": time.monotonic() - t0,
                    "rollback_after": _rollback_after(env, args.state_dir),
                    "requests": result.sample.requests, "failures": result.sample.failures,
                    "id": EnvStore(env, args.state_dir).find(None, MODEL).id})
    _cli(["rollout", "report", "--env", env, "--all", *_state(args)], quiet=True)
    _cli(["env", "down", env, *_state(args)])
    return out


def _rollout(args: argparse.Namespace, env: str, version: str, reg: list[str]) -> int:
    """Start and follow a rollout; pass a manual gate as a person (or CI job) would."""
    import threading

    from modelrail.rollout.core.spec import Phase
    from modelrail.rollout.local.store import EnvStore

    store = EnvStore(env, args.state_dir)
    stop = threading.Event()

    def gatekeeper() -> None:
        while not stop.wait(0.5):
            active = store.active(MODEL)
            st = active[0].rollout_status() if active else None
            if st is not None and st.phase is Phase.PAUSED:
                print(f"   (manual gate at {st.weight}%: the demo approves it: modelrail "
                      f"rollout promote --env {env} --model {MODEL})", flush=True)
                _cli(["rollout", "promote", "--env", env, "--model", MODEL, *_state(args)],
                     quiet=True)
                while not stop.wait(0.5) and (active[0].rollout_status() or st).seq == st.seq:
                    pass  # until the controller has acted on it

    keeper = threading.Thread(target=gatekeeper, daemon=True)
    keeper.start()
    try:
        return _cli(["rollout", "start", "--env", env, "--model", f"{MODEL}:{version}",
                     "--wait", "--timeout", "600", "--step-seconds", str(args.step_seconds),
                     *reg, *_state(args)])
    finally:
        stop.set()
        keeper.join(5)


def _rollback_after(env: str, state_dir: Path | None) -> str:
    """Seconds from the canary's first traffic to the rollback being done (or, when it
    never took traffic, from its start)."""
    from modelrail.rollout.local.store import EnvStore

    st = EnvStore(env, state_dir).find(None, MODEL).rollout_status()
    if st is None or st.phase.value != "RolledBack":
        return "-"
    first = next((h["at"] for h in st.history if h["action"] == "set_weight"), None)
    done = st.history[-1]["at"]
    if first is None:  # stopped by the pre-traffic analysis: nobody was routed to it
        return f"before traffic ({done - st.started_at:.1f}s)"
    return f"{done - first:.1f}s"


def _write_report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    from modelrail.rollout.local.report import write_report
    from modelrail.rollout.local.store import EnvStore, RolloutFiles

    pairs = []
    for r in results:
        store = EnvStore(r["env"], args.state_dir)
        pairs.append((store, RolloutFiles(store.rollouts_dir / r["id"])))
    write_report(args.report, pairs, title="modelrail demo: iris through dev → staging → prod")
