"""Rollout benchmark on the local platform: for each kind of bad candidate, the time from the
canary's first traffic to full rollback and the blast radius (share of all client requests
that failed while the canary was live); for a good candidate, failed requests; and the
weight-change propagation time (set on Traefik → observed on its API). Each bad kind runs
twice: with the pre-traffic analysis `rollout start` does by default (the ready canary is
loaded directly and gated before any user request), and with live-traffic analysis only.

    .venv/bin/python benchmarks/rollout.py [--runtime process|container|both]
                                            [--platform local|cluster|both]

Real processes, real Traefik, real Locust, continuous client load through the proxy; the
rollout runs as the environment's daemon runs it (local/runner.py: the rollout controller
over the local platform, built from the rollout's files), the platform supervised every
second in the same loop. With the container runtime every instance is a container of the
real inference image, run as the dev stack's Deployment says (podman+runc, on the
internal `modelrail` network). Loopback and that network only, bounded in time. Results:
.modelrail/bench/rollout.json and the rollout section of BENCHMARKS.md. `--platform cluster`
measures the same on a real cluster (rollout_cluster.py): .modelrail/bench/rollout-cluster.json
and the rollout-cluster section.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".modelrail" / "bench"
os.environ.setdefault("BENTOML_HOME", str(WORK / "bentoml"))
os.environ.setdefault("MODELRAIL_REGISTRY", str(WORK / "registry"))

import numpy as np  # noqa: E402

from benchmarks.sections import write_section  # noqa: E402
from modelrail.models.registry import Registry  # noqa: E402
from modelrail.rollout.core.spec import RolloutSpec, Thresholds  # noqa: E402
from modelrail.rollout.load.client import ClientTraffic  # noqa: E402
from modelrail.rollout.local.platform import LocalEnvironment  # noqa: E402
from modelrail.rollout.local.runner import TICK_SECONDS, open_rollout  # noqa: E402
from modelrail.rollout.local.runtime import ContainerRuntime  # noqa: E402
from modelrail.rollout.local.store import RolloutFiles, write_json  # noqa: E402
from modelrail.serving.config import ModelRef  # noqa: E402

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [5.1, 3.5, 1.4, 0.2]}]}
SPEC = RolloutSpec(
    model="iris", stable_version="1", canary_version="2", steps=(10, 50, 100), step_seconds=4,
    thresholds=Thresholds(max_error_rate=0.01, max_p99_latency_ms=250, max_latency_ratio=5.0,
                          max_error_rate_increase=0.01, max_label_disagreement=0.1,
                          min_requests=30),
    failure_limit=1, progress_deadline_seconds=60)


def prepare() -> tuple[np.ndarray, str]:
    from sklearn.linear_model import LogisticRegression

    from modelrail.models.register import register_estimator, register_model
    from modelrail.models.registry import Registry
    from modelrail.models.train import load_spec, train_all

    trained = train_all(load_spec(ROOT / "models" / "examples.yaml"), WORK / "train",
                        ["iris:1", "iris:2"])
    for t in trained:
        register_model(model_path=t.model_path, data_path=t.data_path, name=t.name,
                       version=t.version, registry=Registry())
    from modelrail.models.dataset import load_split

    split = load_split(trained[0].data_path)
    wrong = LogisticRegression(max_iter=1000).fit(
        split.X_train, np.random.default_rng(1).permutation(split.y_train))
    register_estimator(estimator=wrong, split=split, name="iris", version="98-shuffled",
                       registry=Registry(), source_sha256="benchmark")
    return split.X_test, "98-shuffled"


def _environment(name: str, faults: dict[str, Any], image: str | None) -> LocalEnvironment:
    extra_env = {"MODELRAIL_FAULTS": json.dumps(faults)}
    runtime = None if image is None else ContainerRuntime(
        image=image, project=ROOT, stack="dev", env_name=name, extra_env=extra_env)
    return LocalEnvironment(name=name, run_dir=WORK / "rollout" / name, extra_env=extra_env,
                            runtime=runtime)


def scenario(name: str, rows: np.ndarray, spec: RolloutSpec,
             faults: dict[str, Any], image: str | None = None) -> dict[str, Any]:
    mode = "pre-traffic + live" if spec.pre_traffic_analysis else "live only"
    shutil.rmtree(WORK / "rollout" / name, ignore_errors=True)  # a fresh rollout, not a resume
    env = _environment(name, faults, image)
    files = RolloutFiles(WORK / "rollout" / name / "rollouts" / f"20250101T000000-iris-{name}")
    files.dir.mkdir(parents=True)
    task = Registry().get(spec.model, spec.canary_version).task
    write_json(files.request, {"id": files.id, "env": name, "spec": spec.to_dict(),
                               "task": task})
    write_json(files.sample, {"rows": rows.tolist()})
    env.start()
    first_traffic: list[float] = []
    done_at: list[float] = []
    propagation: list[float] = []
    asked: tuple[int, float] | None = None  # a weight decided and not yet seen applied
    try:
        env.scale("iris", "stable", ref=ModelRef("iris", "1"), replicas=1)
        env.router.set_weight(route="iris", canary_weight=0)
        env.router.wait_applied(route="iris")
        traffic = ClientTraffic(f"http://127.0.0.1:{env.router.http_port}/v2/models/iris/"
                                "infer", BODY, max_seconds=300).start()
        started = time.monotonic()
        runner = open_rollout(files, env=env, registry=Registry(),
                              audit_path=files.dir / "audit.jsonl")
        weight, last_supervised = 0, 0.0
        try:
            while not runner.finished and time.monotonic() - started < 240:
                status = runner.tick()
                now = time.monotonic()
                if now - last_supervised >= 1.0:  # as the daemon's loop does
                    env.supervise()
                    last_supervised = now
                if status.weight > 0 and status.weight != weight:
                    asked = (status.weight, now)  # set on Traefik → observed on its API
                weight = status.weight
                observed = env.router.observed_weight(route="iris")
                if asked is not None and observed == asked[0]:
                    propagation.append(time.monotonic() - asked[1])
                    asked = None
                if observed and not first_traffic:
                    first_traffic.append(time.monotonic())
                time.sleep(TICK_SECONDS / 5)
            if runner.finished:
                done_at.append(time.monotonic())
        finally:
            runner.close()
        status = runner.controller.status
        traffic.stop()
    finally:
        env.stop()
    total, failed = traffic.total, traffic.failed
    return {
        "kind": name, "mode": mode, "phase": status.phase.value,
        "runtime": "process" if image is None else "container",
        "start_to_end_s": (done_at[0] - started) if done_at else None,
        "canary_took_traffic": bool(first_traffic),
        "first_traffic_to_end_s": (done_at[0] - first_traffic[0])
        if first_traffic and done_at else None,
        "requests": total, "failed": failed,
        "blast_radius": failed / total if total else None,
        "weight_propagation_s": max(propagation) if propagation else None,
        "reason": status.message[:160],
    }


def main() -> int:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--platform", choices=("local", "cluster", "both"), default="local",
                   help="local: the local platform (--runtime); cluster: a 5-node cluster "
                        "with the operator, the Gateway and `rollout start --kube` "
                        "(root; upstream binaries built)")
    p.add_argument("--runtime", choices=("process", "container", "both"), default="both")
    args = p.parse_args()
    rows, wrong = prepare()
    if args.platform in ("local", "both"):
        local(args.runtime, rows, wrong)
    if args.platform in ("cluster", "both"):
        from benchmarks import rollout_cluster

        work = WORK / "cluster"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        runs = rollout_cluster.run(work, wrong)
        (WORK / "rollout-cluster.json").write_text(json.dumps(runs, indent=2))
        write_section("rollout-cluster", cluster_section(runs))
    return 0


def local(runtime: str, rows: np.ndarray, wrong: str) -> None:
    images: list[str | None] = []
    if runtime in ("process", "both"):
        images.append(None)
    if runtime in ("container", "both"):
        from modelrail.images.build import build_inference

        images.append(build_inference([ModelRef("iris", "1"), ModelRef("iris", "2"),
                                       ModelRef("iris", wrong)]).ref)
    pre = replace(SPEC, pre_traffic_analysis=True)  # what `rollout start` does by default
    runs = []
    for image in images:
        runs.append(scenario("good", rows, pre, {}, image))
        for spec in (pre, SPEC):
            runs += [
                scenario("errors", rows, spec, {"iris:2": {"error_rate": 0.3}}, image),
                scenario("slow", rows, spec, {"iris:2": {"latency_ms": 400}}, image),
                scenario("wrong", rows, replace(spec, canary_version=wrong), {}, image),
            ]
        runs.append(scenario("never-ready", rows, replace(pre, progress_deadline_seconds=15),
                             {"iris:2": {"never_ready": True}}, image))
    if runtime != "both" and (WORK / "rollout.json").is_file():
        # keep the other runtime's rows of the last run (rows from before the column
        # existed were processes)
        earlier = json.loads((WORK / "rollout.json").read_text())
        runs = [r for r in earlier if r.get("runtime", "process") != runtime] + runs
        for r in runs:
            r.setdefault("runtime", "process")
    (WORK / "rollout.json").write_text(json.dumps(runs, indent=2))
    lines = ["## Rollouts (`benchmarks/rollout.py`)", "",
             "Local platform, iris:1 → candidate, steps 10/50/100 %, 4 s per step, "
             "continuous client load through Traefik (one client, ~5 ms between requests) "
             "plus Locust per analysis interval. Targets: rollback within 30 s of first "
             "canary traffic, blast radius under 0.5 %, zero failed requests for a good "
             "canary.", "", *_table(runs)]
    write_section("rollout", "\n".join(lines) + "\n")


def _table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| runtime | candidate | analysis | outcome | start → end | first traffic → end "
             "| client requests | failed | blast radius | max weight propagation |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        t = r["first_traffic_to_end_s"]
        se = r["start_to_end_s"]
        br = r["blast_radius"]
        wp = r["weight_propagation_s"]
        first = "no traffic" if not r["canary_took_traffic"] else (
            "–" if t is None else f"{t:.1f} s")
        lines.append(f"| {r['runtime']} | {r['kind']} | {r['mode']} | {r['phase']} | "
                     f"{'–' if se is None else f'{se:.1f} s'} | {first} | {r['requests']} | "
                     f"{r['failed']} | {'–' if br is None else f'{br:.3%}'} | "
                     f"{'–' if wp is None else f'{wp:.2f} s'} |")
    return lines


def cluster_section(runs: list[dict[str, Any]]) -> str:
    lines = ["## Rollouts on the cluster (`benchmarks/rollout.py --platform cluster`)", "",
             "A 5-node cluster (`modelrail cluster up`), the `rollouts` stack applied by "
             "`pulumi up` (steps 50/100 %, 10 s per step, 5 s analysis interval), the "
             "operator in the cluster, `modelrail rollout start --kube --wait` with the CI "
             "ServiceAccount's token. Two REST clients through the Gateway (Traefik, "
             "HTTPRoute; ~5 ms between requests each) record every answer's status and "
             "model version. Weight propagation: the HTTPRoute's first canary weight "
             "written → the first client answer from the canary. The faulty candidates: "
             "50 % errors, +400 ms, a model trained on shuffled labels, a warm-up that "
             "fails (progress deadline 45 s).", "", *_table(runs), "",
             "Anchors, as their documentation configures them (minutes, not seconds):",
             "- **Flagger**: `analysis.interval` 1 m (the default) and `threshold: 5` "
             "failed checks before rollback, as in its tutorials: a canary failing from "
             "its first check is rolled back after about **5 min** of traffic.",
             "- **Argo Rollouts**: the background-analysis example measures the success "
             "rate every 5 m with `failureLimit: 3`: about **10–15 min** of a failing "
             "canary before the rollout aborts.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
