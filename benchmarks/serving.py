"""Serving benchmark: modelrail (REST, gRPC) against MLServer and a plain BentoML
scikit-learn service, with two floors (onnxruntime in-process; a bare echo on the same
HTTP/gRPC stacks), all driven by one load generator (loadgen.py), one server at a time,
each with one worker process, serving the same fitted model. All servers are started
first and measured one at a time in interleaved rounds; each figure is the median.

    .venv/bin/python benchmarks/serving.py [--duration 3] [--rounds 3] [--levels 1,8,32]

Peers run from their own virtual environments under .modelrail/bench/venvs (created on
first run with uv from pinned versions, so their pins never bend modelrail's). Results:
.modelrail/bench/serving.json and the serving section of BENCHMARKS.md. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".modelrail" / "bench"
os.environ.setdefault("BENTOML_HOME", str(WORK / "bentoml"))
os.environ.setdefault("MODELRAIL_REGISTRY", str(WORK / "registry"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import numpy as np  # noqa: E402

from benchmarks.loadgen import Result, http_request, run_grpc, run_http  # noqa: E402
from benchmarks.sections import write_section  # noqa: E402
from modelrail.processes import free_port, stop, wait_ready  # noqa: E402
from modelrail.serving._proto import oip_v2_pb2 as pb  # noqa: E402

PEERS = {
    "mlserver": ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "scikit-learn==1.9.1",
                 "numpy==2.4.6"],
    "sklearn-bento": ["bentoml==1.4.39", "scikit-learn==1.9.1", "numpy==2.4.6"],
}
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


def peer_python(name: str) -> Path:
    venv = WORK / "venvs" / name
    py = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = "\n".join(PEERS[name])
    if not (py.exists() and stamp.exists() and stamp.read_text() == wanted):
        uv = ROOT / ".venv" / "bin" / "uv"
        subprocess.run([str(uv), "venv", "-q", "--python", "3.11", str(venv)], check=True)
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(py), *PEERS[name]],
                       check=True)
        stamp.write_text(wanted)
    return py


def prepare_model(ref: str) -> tuple[Path, Any, np.ndarray]:
    """Train and register the example model; return its joblib path, card, one input row."""
    from modelrail.models.register import register_model
    from modelrail.models.registry import Registry
    from modelrail.models.train import load_spec, train_all

    trained = train_all(load_spec(ROOT / "models" / "examples.yaml"), WORK / "train", [ref])[0]
    card = register_model(model_path=trained.model_path, data_path=trained.data_path,
                          name=trained.name, version=trained.version, registry=Registry()).card
    row = np.load(trained.data_path)["X_test"][:1].astype(np.float32)
    return trained.model_path, card, row


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    if not wait_ready(url, timeout=timeout, proc=proc):
        stop(proc)
        raise RuntimeError(f"{url} did not become ready")


def start(argv: list[str], env: dict[str, str], cwd: Path, log: Path,
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def oip_json(input_name: str, row: np.ndarray, output: str) -> bytes:
    return json.dumps({"inputs": [{"name": input_name, "datatype": "FP32",
                                   "shape": list(row.shape), "data": row.reshape(-1).tolist()}],
                       "outputs": [{"name": output}]}).encode()


def oip_grpc(model: str, version: str, input_name: str, row: np.ndarray, output: str) -> bytes:
    msg = pb.ModelInferRequest(model_name=model, model_version=version)
    t = msg.inputs.add(name=input_name, datatype="FP32", shape=list(row.shape))
    t.contents.fp32_contents.extend(row.reshape(-1).tolist())
    msg.outputs.add(name=output)
    return msg.SerializeToString()


def inprocess_floor(onnx_bytes: bytes, row: np.ndarray, seconds: float) -> dict[str, float]:
    from modelrail.models.runtime import new_session

    session = new_session(onnx_bytes)
    feed = {"input": row}
    for _ in range(2000):
        session.run(["probabilities"], feed)
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(["probabilities"], feed)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return {"rps": len(lat) / sum(lat), "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000, "requests": len(lat)}


@dataclass
class Target:
    """One measured thing: how to reach it and what to send."""

    name: str
    kind: str  # "http" | "grpc"
    address: Any  # (port, path) for HTTP; "host:port" for gRPC
    payload: bytes
    method: str = GRPC_INFER


def measure_once(t: Target, c: int, warmup: float, duration: float) -> Result:
    if t.kind == "http":
        port, path = t.address
        request = http_request("127.0.0.1", port, path, t.payload)
        res = asyncio.run(run_http("127.0.0.1", port, request, concurrency=c, warmup=warmup,
                                   duration=duration))
    else:
        res = asyncio.run(run_grpc(t.address, t.method, t.payload, concurrency=c,
                                   warmup=warmup, duration=duration))
    if res.errors:
        raise RuntimeError(f"{t.name}: {res.errors} errors at concurrency {c}")
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", default="iris:1")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; each figure is the median over rounds")
    parser.add_argument("--skip-peers", action="store_true", help="modelrail and floors only")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite BENCHMARKS.md from the last run's serving.json")
    args = parser.parse_args()
    if args.report_only:
        write_report(json.loads((WORK / "serving.json").read_text()))
        return 0
    levels = [int(v) for v in args.levels.split(",")]
    WORK.mkdir(parents=True, exist_ok=True)
    logs = WORK / "logs"
    logs.mkdir(exist_ok=True)

    model_path, card, row = prepare_model(args.model)
    from modelrail.models.registry import Registry

    _, onnx_bytes = Registry().read_verified(card.name, card.version)
    results: dict[str, Any] = {"model": card.ref, "estimator": card.estimator,
                               "levels": levels, "duration_s": args.duration,
                               "rounds": args.rounds,
                               "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                                          f"Python {platform.python_version()}",
                               "targets": {}}
    print(f"model {card.ref} ({card.estimator}); one worker per server; loopback", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    runs: dict[str, dict[int, list[Result]]] = {}
    ort_runs: list[dict[str, float]] = []
    try:
        targets = start_all(card, model_path, row, logs, procs, peers=not args.skip_peers)
        runs = {t.name: {c: [] for c in levels} for t in targets}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            ort_runs.append(inprocess_floor(onnx_bytes, row, args.duration))
            for t in targets:
                for c in levels:
                    res = measure_once(t, c, args.warmup, args.duration)
                    runs[t.name][c].append(res)
                    print(f"  {t.name:<22} c={c:<3} {res.throughput:8.0f} req/s  "
                          f"p50 {res.percentile(0.5) * 1000:.3f} ms", flush=True)
    finally:
        for p in procs:
            stop(p)
    T = results["targets"]
    T["onnxruntime in-process"] = {1: _median_dicts(ort_runs)}
    for name, by_level in runs.items():
        T[name] = {c: _median_results(rs) for c, rs in by_level.items()}
    (WORK / "serving.json").write_text(json.dumps(results, indent=2))
    write_report(results)
    return 0


def _median_results(rs: list[Result]) -> dict[str, float]:
    return _median_dicts([{"rps": r.throughput, "p50_ms": r.percentile(0.5) * 1000,
                           "p99_ms": r.percentile(0.99) * 1000, "requests": r.requests}
                          for r in rs])


def _median_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(statistics.median(d[k] for d in ds)) for k in ds[0]}


def start_all(card: Any, model_path: Path, row: np.ndarray, logs: Path,
              procs: list[subprocess.Popen[bytes]], *, peers: bool) -> list[Target]:
    """Start every server (each idles while another is measured) and wait for all."""
    from modelrail.processes import server_command, spawn
    from modelrail.serving.config import ServingConfig

    path = f"/v2/models/{card.name}/versions/{card.version}/infer"
    hp, gp = free_port(), free_port()
    cfg = ServingConfig.from_env({"MODELRAIL_MODELS": card.ref, "MODELRAIL_GRPC_PORT": str(gp),
                                  "MODELRAIL_GRPC_HOST": "127.0.0.1", "MODELRAIL_WORKERS": "1"})
    proc = spawn(server_command(cfg, http_host="127.0.0.1", http_port=hp),
                 log_path=logs / "modelrail.log")
    procs.append(proc)
    wait_http(f"http://127.0.0.1:{hp}", proc)
    targets = [
        Target("modelrail REST", "http", (hp, path), oip_json("input", row, "probabilities")),
        Target("modelrail gRPC", "grpc", f"127.0.0.1:{gp}",
               oip_grpc(card.name, card.version, "input", row, "probabilities")),
    ]
    hp, gp = free_port(), free_port()
    proc = start([sys.executable, "-m", "bentoml", "serve", "echo_service:EchoService",
                  "--host", "127.0.0.1", "--port", str(hp)],
                 {"ECHO_GRPC_PORT": str(gp)}, ROOT / "benchmarks" / "peers", logs / "echo.log")
    procs.append(proc)
    wait_echo(hp, proc)
    targets += [
        Target("echo REST", "http", (hp, "/echo"), oip_json("input", row, "probabilities")),
        Target("echo gRPC", "grpc", f"127.0.0.1:{gp}",
               oip_grpc(card.name, card.version, "input", row, "probabilities"),
               method="/bench.Echo/Echo"),
    ]
    if peers:
        targets += start_peers(card, model_path, row, logs, procs)
    return targets


def start_peers(card: Any, model_path: Path, row: np.ndarray, logs: Path,
                procs: list[subprocess.Popen[bytes]]) -> list[Target]:
    path = f"/v2/models/{card.name}/versions/{card.version}/infer"
    # MLServer with its scikit-learn runtime, same fitted model, inference in-process
    py = peer_python("mlserver")
    mdir = WORK / "mlserver-repo"
    (mdir / card.name).mkdir(parents=True, exist_ok=True)
    hp, gp, mp = free_port(), free_port(), free_port()
    (mdir / "settings.json").write_text(json.dumps({
        "http_port": hp, "grpc_port": gp, "metrics_port": mp, "host": "127.0.0.1",
        "parallel_workers": 0, "debug": False}))
    (mdir / card.name / "model-settings.json").write_text(json.dumps({
        "name": card.name, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model_path), "version": card.version}}))
    proc = start([str(py.parent / "mlserver"), "start", str(mdir)], {}, mdir,
                 logs / "mlserver.log")
    procs.append(proc)
    wait_http(f"http://127.0.0.1:{hp}", proc)
    targets = [
        Target("MLServer REST", "http", (hp, path), oip_json("input-0", row, "predict_proba")),
        Target("MLServer gRPC", "grpc", f"127.0.0.1:{gp}",
               oip_grpc(card.name, card.version, "input-0", row, "predict_proba")),
    ]
    # the plain BentoML way: a service calling scikit-learn
    py = peer_python("sklearn-bento")
    hp = free_port()
    proc = start([str(py), "-m", "bentoml", "serve", "sklearn_service:SklearnService",
                  "--host", "127.0.0.1", "--port", str(hp)],
                 {"PEER_MODEL_PATH": str(model_path)}, ROOT / "benchmarks" / "peers",
                 logs / "sklearn-bento.log")
    procs.append(proc)
    wait_plain(hp, proc)
    targets.append(Target("BentoML+sklearn REST", "http", (hp, "/predict_proba"),
                          json.dumps({"input": row.tolist()}).encode()))
    return targets


def wait_for(url: str, proc: subprocess.Popen[bytes], what: str, *, method: str = "GET",
             timeout: float = 120) -> None:
    """Poll `url` until it answers 200 (a peer without OIP health routes)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited; see .modelrail/bench/logs")
        try:
            if httpx.request(method, url, content=b"{}" if method == "POST" else None
                             ).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s")


def wait_echo(port: int, proc: subprocess.Popen[bytes]) -> None:
    wait_for(f"http://127.0.0.1:{port}/echo", proc, "echo server", method="POST")
    time.sleep(1.0)  # its gRPC server starts in the same startup hook, just after


def wait_plain(port: int, proc: subprocess.Popen[bytes]) -> None:
    wait_for(f"http://127.0.0.1:{port}/readyz", proc, "plain BentoML server")


def write_report(results: dict[str, Any]) -> None:
    # level keys are ints in memory and strings once through JSON
    T = {name: {int(c): v for c, v in by.items()} for name, by in results["targets"].items()}
    levels = results["levels"]
    lines = [
        "## Serving (`benchmarks/serving.py`)", "",
        f"Model `{results['model']}` ({results['estimator']}), one row per request, one "
        f"worker process per server, {results['duration_s']:.0f} s per level after warm-up, "
        f"median of {results['rounds']} interleaved rounds (all servers up, one measured at "
        "a time), "
        f"one closed-loop load generator on the same machine ({results['machine']}). "
        "Absolute numbers on a shared 2-core machine are noisy; read the ratios.", "",
        "| target | " + " | ".join(f"req/s c={c}" for c in levels)
        + " | p50 ms c=1 | p99 ms c=1 | p99 ms c=" + str(levels[-1]) + " |",
        "|---" * (len(levels) + 4) + "|",
    ]
    for name, by_level in T.items():
        cells = [f"{by_level[c]['rps']:.0f}" if c in by_level else "–" for c in levels]
        one = by_level[1]
        top = by_level.get(levels[-1])
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {one['p50_ms']:.3f} | {one['p99_ms']:.3f} | "
                     + (f"{top['p99_ms']:.3f}" if top else "–") + " |")
    lines += ["", "Ratios (modelrail ÷ peer; throughput higher is better, latency lower is "
                  "better):", ""]
    for proto in ("REST", "gRPC"):
        mine = T.get(f"modelrail {proto}")
        if not mine:
            continue
        for peer in (f"MLServer {proto}", f"echo {proto}"):
            other = T.get(peer)
            if not other:
                continue
            tp = ", ".join(f"c={c}: {mine[c]['rps'] / other[c]['rps']:.2f}×" for c in levels)
            lat = mine[1]["p50_ms"] / other[1]["p50_ms"]
            lines.append(f"- {proto} vs {peer}: throughput {tp}; single-request p50 latency "
                         f"{lat:.2f}×")
    if "BentoML+sklearn REST" in T and "modelrail REST" in T:
        m, p = T["modelrail REST"], T["BentoML+sklearn REST"]
        tp = ", ".join(f"c={c}: {m[c]['rps'] / p[c]['rps']:.2f}×" for c in levels)
        lines.append(f"- REST vs plain BentoML+scikit-learn: throughput {tp}; p50 "
                     f"{m[1]['p50_ms'] / p[1]['p50_ms']:.2f}×")
    ort = T["onnxruntime in-process"][1]
    lines.append(f"- onnxruntime in-process floor: {ort['p50_ms'] * 1000:.1f} µs per call "
                 f"(p50), {ort['rps']:.0f} calls/s on one thread")
    write_section("serving", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
