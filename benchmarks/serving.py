"""Serving benchmark: modelrail (REST, gRPC) against MLServer, KServe's model server and a
plain BentoML scikit-learn service, with two floors (onnxruntime in-process; a bare echo on
the same HTTP/gRPC stacks), all driven by one load generator (loadgen.py), on three example
models, one row and batches of rows per request, at one and more worker processes. Every
server is started first and measured one at a time in interleaved rounds; each figure is
the median over the rounds.

    .venv/bin/python benchmarks/serving.py [--models iris:1,breast-cancer:2,diabetes:2]
        [--batches 1,64] [--levels 1,8,32] [--other-levels 1,8] [--workers 1,2]
        [--worker-level 8] [--peers mlserver,kserve,sklearn-bento] [--duration 1]
        [--warmup 0.4] [--rounds 3] [--no-report] [--json PATH]

A short smoke run: --models iris:1 --batches 1 --levels 1 --workers 1 --rounds 1
--duration 0.5 --no-report (the full defaults take about 15 minutes on 2 cores; the run prints
its estimate first). Peers run from their own virtual environments under
.modelrail/bench/venvs (created on first run with uv from pinned versions, so their pins never
bend modelrail's). Every target's answer to the exact payload it is measured with is checked
against modelrail's before anything is measured. Results: .modelrail/bench/serving.json and
the serving section of BENCHMARKS.md (`--report-only` rewrites it from the JSON; with
--no-report the section is only printed and the JSON is serving-smoke.json). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
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
                 # uvloop 0.22 made get_event_loop() raise outside a running loop, which
                 # kills MLServer 1.7.1's parallel inference workers at start
                 "uvloop==0.21.0",
                 "numpy==2.4.6"],
    "sklearn-bento": ["bentoml==1.4.39", "scikit-learn==1.9.1", "numpy==2.4.6"],
    # KServe's Python model server running the same ONNX graphs with modelrail's onnxruntime
    "kserve": ["kserve==0.21.0", "onnxruntime==1.31.1", "numpy==2.4.6"],
}
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
# the same ONNX graph on the same onnxruntime: equal but for float rounding of another
# thread layout (tests/serving/test_stock_clients.py uses the same bounds)
SAME_GRAPH_RTOL, SAME_GRAPH_ATOL = 1e-6, 1e-7
DEFAULT_MODELS = "iris:1,breast-cancer:2,diabetes:2"
PER_CELL_OVERHEAD_S = 0.15  # connections, event loop, bookkeeping per measured cell


def peer_python(name: str) -> Path:
    venv = WORK / "venvs" / name
    py = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = "\n".join(PEERS[name])
    if not (py.exists() and stamp.exists() and stamp.read_text() == wanted):
        uv = ROOT / ".venv" / "bin" / "uv"
        subprocess.run([str(uv), "venv", "-q", "--clear", "--python", "3.11", str(venv)],
                       check=True)
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(py), *PEERS[name]],
                       check=True)
        stamp.write_text(wanted)
    return py


# --- models and cases ---------------------------------------------------------------------

@dataclass
class Model:
    """One served example model: its fitted scikit-learn file, ONNX graph and test rows."""

    ref: str
    name: str
    version: str
    estimator: str
    model_path: Path
    onnx_bytes: bytes
    X_test: np.ndarray
    output: str  # what modelrail and KServe are asked for: probabilities | predictions
    sk_method: str  # what MLServer and plain BentoML are asked for: predict_proba | predict

    @property
    def classifier(self) -> bool:
        return self.output == "probabilities"


def prepare_model(ref: str) -> Model:
    """Train and register the example model (models/examples.yaml)."""
    from modelrail.models.register import register_model
    from modelrail.models.registry import Registry
    from modelrail.models.train import load_spec, train_all

    trained = train_all(load_spec(ROOT / "models" / "examples.yaml"), WORK / "train", [ref])[0]
    card = register_model(model_path=trained.model_path, data_path=trained.data_path,
                          name=trained.name, version=trained.version, registry=Registry()).card
    _, onnx_bytes = Registry().read_verified(card.name, card.version)
    outputs = {o.name for o in card.outputs}
    classifier = "probabilities" in outputs
    return Model(ref=card.ref, name=card.name, version=card.version, estimator=card.estimator,
                 model_path=trained.model_path, onnx_bytes=onnx_bytes,
                 X_test=np.load(trained.data_path)["X_test"].astype(np.float32),
                 output="probabilities" if classifier else "predictions",
                 sk_method="predict_proba" if classifier else "predict")


@dataclass
class Case:
    """One model at one batch size: the rows every target is sent, and the levels measured."""

    model: Model
    batch: int
    levels: list[int]

    @property
    def key(self) -> str:
        return f"{self.model.ref} ×{self.batch}"

    @property
    def rows(self) -> np.ndarray:
        """The first `batch` test rows (repeated from the start when there are fewer)."""
        x = self.model.X_test
        return np.ascontiguousarray(x[np.arange(self.batch) % len(x)])


def oip_json(input_name: str, rows: np.ndarray, output: str) -> bytes:
    return json.dumps({"inputs": [{"name": input_name, "datatype": "FP32",
                                   "shape": list(rows.shape),
                                   "data": rows.reshape(-1).tolist()}],
                       "outputs": [{"name": output}]}).encode()


def oip_grpc(model: str, version: str, input_name: str, rows: np.ndarray, output: str) -> bytes:
    msg = pb.ModelInferRequest(model_name=model, model_version=version)
    t = msg.inputs.add(name=input_name, datatype="FP32", shape=list(rows.shape))
    t.contents.fp32_contents.extend(rows.reshape(-1).tolist())
    msg.outputs.add(name=output)
    return msg.SerializeToString()


def inprocess_answer(case: Case) -> np.ndarray:
    from modelrail.models.runtime import new_session

    session = new_session(case.model.onnx_bytes)
    return np.asarray(session.run([case.model.output], {"input": case.rows})[0])


def inprocess_floor(case: Case, seconds: float) -> dict[str, float]:
    from modelrail.models.runtime import new_session

    session = new_session(case.model.onnx_bytes)
    feed = {"input": case.rows}
    names = [case.model.output]
    for _ in range(200):
        session.run(names, feed)
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(names, feed)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return {"rps": len(lat) / sum(lat), "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000, "requests": len(lat)}


# --- targets and servers ------------------------------------------------------------------

@dataclass
class Target:
    """One measured thing: how to reach it, what to send, how to read its answer."""

    name: str  # e.g. "modelrail REST"; the same name at every worker count
    workers: int
    kind: str  # "http" | "grpc"
    address: Any  # (port, path) for HTTP; "host:port" for gRPC
    payload: bytes
    reply: str  # "oip-json" | "oip-grpc" | "plain-json" | "echo"
    output: str = ""  # the output read from an OIP answer
    check: str = "same-graph"  # "same-graph" (ONNX) | "parity" (scikit-learn) | "echo"
    method: str = GRPC_INFER
    channels: int = 1  # gRPC channels; 0 = one per closed-loop client (like HTTP)
    pid: int = 0  # the server's first process: its tree's CPU is read around each cell


@dataclass
class Server:
    """A started server: its process, how to wait for it, its targets for a case."""

    label: str
    workers: int
    proc: subprocess.Popen[bytes]
    wait: Callable[[], None]
    targets: Callable[[Case], list[Target]]


def start(argv: list[str], env: dict[str, str], cwd: Path, log: Path,
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env={**os.environ, **env}, cwd=cwd,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def start_modelrail(models: list[Model], workers: int, logs: Path,
                    env: dict[str, str] | None = None, label: str = "modelrail") -> Server:
    from modelrail.processes import server_command, spawn
    from modelrail.serving.config import ServingConfig

    hp, gp = free_port(), free_port()
    cfg = ServingConfig.from_env({"MODELRAIL_MODELS": ",".join(m.ref for m in models),
                                  "MODELRAIL_GRPC_PORT": str(gp),
                                  "MODELRAIL_GRPC_HOST": "127.0.0.1",
                                  "MODELRAIL_WORKERS": str(workers), **(env or {})})
    proc = spawn(server_command(cfg, http_host="127.0.0.1", http_port=hp),
                 log_path=logs / f"{label}-w{workers}.log")

    def targets(case: Case) -> list[Target]:
        m = case.model
        return [
            Target(f"{label} REST", workers, "http",
                   (hp, f"/v2/models/{m.name}/versions/{m.version}/infer"),
                   oip_json("input", case.rows, m.output), "oip-json", m.output),
            Target(f"{label} gRPC", workers, "grpc", f"127.0.0.1:{gp}",
                   oip_grpc(m.name, m.version, "input", case.rows, m.output), "oip-grpc",
                   m.output),
        ]

    return Server(label, workers, proc,
                  lambda: wait_http(f"http://127.0.0.1:{hp}", proc), targets)


def start_echo(logs: Path) -> Server:
    hp, gp = free_port(), free_port()
    proc = start([sys.executable, "-m", "bentoml", "serve", "echo_service:EchoService",
                  "--host", "127.0.0.1", "--port", str(hp)],
                 {"ECHO_GRPC_PORT": str(gp), "ECHO_WORKERS": "1"},
                 ROOT / "benchmarks" / "peers", logs / "echo.log")

    def targets(case: Case) -> list[Target]:
        m = case.model
        return [
            Target("echo REST", 1, "http", (hp, "/echo"),
                   oip_json("input", case.rows, m.output), "echo", check="echo"),
            Target("echo gRPC", 1, "grpc", f"127.0.0.1:{gp}",
                   oip_grpc(m.name, m.version, "input", case.rows, m.output), "echo",
                   check="echo", method="/bench.Echo/Echo"),
        ]

    return Server("echo", 1, proc, lambda: wait_echo(hp, proc), targets)


def start_mlserver(models: list[Model], workers: int, logs: Path) -> Server:
    """MLServer with its scikit-learn runtime on the same fitted models. One worker:
    `parallel_workers: 0` (inference in the server process); N: `parallel_workers: N` (one
    front-end process handing requests to N inference processes)."""
    py = peer_python("mlserver")
    mdir = WORK / f"mlserver-repo-w{workers}"
    hp, gp, mp = free_port(), free_port(), free_port()
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "settings.json").write_text(json.dumps({
        "http_port": hp, "grpc_port": gp, "metrics_port": mp, "host": "127.0.0.1",
        "parallel_workers": 0 if workers == 1 else workers, "debug": False}))
    for m in models:
        (mdir / m.name).mkdir(exist_ok=True)
        (mdir / m.name / "model-settings.json").write_text(json.dumps({
            "name": m.name, "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(m.model_path), "version": m.version}}))
    proc = start([str(py.parent / "mlserver"), "start", str(mdir)], {}, mdir,
                 logs / f"mlserver-w{workers}.log")

    def targets(case: Case) -> list[Target]:
        m = case.model
        return [
            Target("MLServer REST", workers, "http",
                   (hp, f"/v2/models/{m.name}/versions/{m.version}/infer"),
                   oip_json("input-0", case.rows, m.sk_method), "oip-json", m.sk_method,
                   check="parity"),
            Target("MLServer gRPC", workers, "grpc", f"127.0.0.1:{gp}",
                   oip_grpc(m.name, m.version, "input-0", case.rows, m.sk_method), "oip-grpc",
                   m.sk_method, check="parity"),
        ]

    def wait() -> None:
        wait_http(f"http://127.0.0.1:{hp}", proc, timeout=240)
        for m in models:  # the server is ready before its parallel workers have loaded
            wait_for(f"http://127.0.0.1:{hp}/v2/models/{m.name}/versions/{m.version}/ready",
                     proc, f"MLServer {m.ref}", timeout=240)

    return Server("MLServer", workers, proc, wait, targets)


def start_kserve(models: list[Model], workers: int, logs: Path) -> Server:
    """KServe's model server with benchmarks/peers/kserve_model.py on the same ONNX graphs.
    N workers: N uvicorn REST processes; its gRPC server stays in the main process, so KServe
    gRPC is measured at one worker only."""
    py = peer_python("kserve")
    mdir = WORK / "kserve-models"
    mdir.mkdir(parents=True, exist_ok=True)
    argv = [str(py), str(ROOT / "benchmarks" / "peers" / "kserve_model.py")]
    for m in models:
        path = mdir / f"{m.name}-{m.version}.onnx"
        path.write_bytes(m.onnx_bytes)
        argv += ["--onnx", f"{m.name}={path}"]
    hp, gp = free_port(), free_port()
    argv += ["--http_port", str(hp), "--grpc_port", str(gp), "--workers", str(workers),
             "--enable_latency_logging", "false"]
    proc = start(argv, {}, mdir, logs / f"kserve-w{workers}.log")

    def targets(case: Case) -> list[Target]:
        m = case.model
        out = [Target("KServe REST", workers, "http", (hp, f"/v2/models/{m.name}/infer"),
                      oip_json("input", case.rows, m.output), "oip-json", m.output)]
        if workers == 1:
            out.append(Target("KServe gRPC", workers, "grpc", f"127.0.0.1:{gp}",
                              oip_grpc(m.name, "", "input", case.rows, m.output), "oip-grpc",
                              m.output))
        return out

    def wait() -> None:
        for m in models:
            wait_for(f"http://127.0.0.1:{hp}/v2/models/{m.name}/ready", proc,
                     f"KServe {m.name}", timeout=240)

    return Server("KServe", workers, proc, wait, targets)


def start_sklearn_bento(models: list[Model], workers: int, logs: Path) -> Server:
    """The plain BentoML way: a service calling scikit-learn on the same fitted models."""
    py = peer_python("sklearn-bento")
    hp = free_port()
    proc = start([str(py), "-m", "bentoml", "serve", "sklearn_service:SklearnService",
                  "--host", "127.0.0.1", "--port", str(hp)],
                 {"PEER_MODELS": ",".join(f"{m.name}={m.model_path}" for m in models),
                  "PEER_WORKERS": str(workers)},
                 ROOT / "benchmarks" / "peers", logs / f"sklearn-bento-w{workers}.log")

    def targets(case: Case) -> list[Target]:
        m = case.model
        return [Target("BentoML+sklearn REST", workers, "http", (hp, f"/{m.sk_method}"),
                       json.dumps({"input": case.rows.tolist(), "model": m.name}).encode(),
                       "plain-json", check="parity")]

    return Server("BentoML+sklearn", workers, proc,
                  lambda: wait_for(f"http://127.0.0.1:{hp}/readyz", proc,
                                   "plain BentoML server", timeout=240), targets)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
    if not wait_ready(url, timeout=timeout, proc=proc):
        raise RuntimeError(f"{url} did not become ready; see .modelrail/bench/logs")


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
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see .modelrail/bench/logs")


def wait_echo(port: int, proc: subprocess.Popen[bytes]) -> None:
    wait_for(f"http://127.0.0.1:{port}/echo", proc, "echo server", method="POST", timeout=240)
    time.sleep(1.0)  # its gRPC server starts in the same startup hook, just after


# --- checking answers ---------------------------------------------------------------------

_RAW = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4"}
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents",
             "INT32": "int_contents"}


def ask(t: Target) -> bytes:
    """Send the target's measured payload once; its answer's bytes."""
    if t.kind == "http":
        import httpx

        port, path = t.address
        r = httpx.post(f"http://127.0.0.1:{port}{path}", content=t.payload,
                       headers={"content-type": "application/json"}, timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"{t.name} ×{t.workers}: HTTP {r.status_code}: {r.text[:300]}")
        return r.content
    import grpc

    with grpc.insecure_channel(t.address) as channel:
        call: Any = channel.unary_unary(t.method)
        return bytes(call(t.payload, timeout=60))


def decode(t: Target, body: bytes) -> np.ndarray:
    """The answer's values for the output asked for, flattened, as float64."""
    if t.reply == "plain-json":
        return np.asarray(json.loads(body), dtype=np.float64).reshape(-1)
    if t.reply == "oip-json":
        for o in json.loads(body)["outputs"]:
            if o["name"] == t.output:
                return np.asarray(o["data"], dtype=np.float64).reshape(-1)
    elif t.reply == "oip-grpc":
        msg = pb.ModelInferResponse.FromString(body)
        for i, o in enumerate(msg.outputs):
            if o.name == t.output:
                if msg.raw_output_contents:
                    values = np.frombuffer(msg.raw_output_contents[i], dtype=_RAW[o.datatype])
                else:
                    values = np.asarray(getattr(o.contents, _CONTENTS[o.datatype]))
                return values.astype(np.float64).reshape(-1)
    raise RuntimeError(f"{t.name} ×{t.workers}: no output {t.output!r} in its answer")


def check_answers(case: Case, targets: list[Target]) -> list[str]:
    """Every target's answer to its measured payload, against modelrail's (itself checked
    against onnxruntime in-process): a peer that answers wrong is not a peer."""
    from modelrail.models.parity import TOL_ABS, TOL_REL

    expected = inprocess_answer(case).astype(np.float64).reshape(-1)
    mine = next(t for t in targets if t.name == "modelrail REST" and t.workers == 1)
    reference = decode(mine, ask(mine))
    if not np.allclose(reference, expected, rtol=SAME_GRAPH_RTOL, atol=SAME_GRAPH_ATOL):
        raise RuntimeError(f"{case.key}: modelrail REST differs from onnxruntime in-process")
    notes = []
    for t in targets:
        body = ask(t)
        if t.check == "echo":
            if body != t.payload:
                raise RuntimeError(f"{t.name}: the echo is not the request")
            continue
        got = decode(t, body)
        if got.shape != reference.shape:
            raise RuntimeError(f"{case.key}: {t.name} ×{t.workers} answered {got.size} values "
                               f"for {t.output or 'its output'}, modelrail {reference.size}")
        diff = np.abs(got - reference)
        if t.check == "same-graph":
            ok = bool(np.all(diff <= SAME_GRAPH_ATOL + SAME_GRAPH_RTOL * np.abs(reference)))
        else:  # scikit-learn in float64 against the FP32 graph: the registry's parity bound
            ok = bool(np.all(diff <= TOL_ABS + TOL_REL * np.abs(reference)))
        if not ok:
            raise RuntimeError(f"{case.key}: {t.name} ×{t.workers} answers differ from "
                               f"modelrail's by up to {diff.max():.3g} ({t.check} bound)")
        notes.append(f"{t.name} ×{t.workers}: max |diff| {diff.max():.2g}")
    return notes


# --- measuring ----------------------------------------------------------------------------

def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and every live process descended from it (a server's
    workers, inference processes and threads included; BentoML's workers run in sessions
    of their own, so the tree is followed, not the session)."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (parent, ticks)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        # after the name: state, ppid, ..., utime (14th field) and stime (15th) (man 5 proc)
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    ticks, todo = 0, [pid]
    while todo:
        p = todo.pop()
        ticks += stats.get(p, (0, 0))[1]
        todo += children.get(p, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure_once(t: Target, c: int, warmup: float, duration: float) -> Result:
    cpu_before = tree_cpu_seconds(t.pid) if t.pid else None
    if t.kind == "http":
        port, path = t.address
        request = http_request("127.0.0.1", port, path, t.payload)
        res = asyncio.run(run_http("127.0.0.1", port, request, concurrency=c, warmup=warmup,
                                   duration=duration))
    else:
        res = asyncio.run(run_grpc(t.address, t.method, t.payload, concurrency=c,
                                   warmup=warmup, duration=duration,
                                   channels=t.channels or c))
    if cpu_before is not None:
        res.server_cpu_s = tree_cpu_seconds(t.pid) - cpu_before
    if res.errors:
        raise RuntimeError(f"{t.name} ×{t.workers}: {res.errors} errors at concurrency {c}")
    return res


@dataclass
class Cell:
    case: Case
    target: Target
    level: int
    scaling: bool = False  # measured for the worker table (gRPC: one channel per client)

    @property
    def key(self) -> tuple[str, str, int, int, bool]:
        return (self.case.key, self.target.name, self.target.workers, self.level,
                self.scaling and self.target.kind == "grpc")


def plan(cases: list[Case], servers: list[Server], worker_level: int) -> list[list[Cell]]:
    """The cells of one round, grouped per case: every one-worker target at the case's
    levels; for the worker table, every target at `worker_level` at each worker count
    (gRPC then with one channel per client, so that a server with several processes on one
    port is reached by several connections, as HTTP clients are; the one-worker gRPC
    figure is measured again that way)."""
    groups = []
    counts = sorted({s.workers for s in servers})
    for case in cases:
        cells: list[Cell] = []
        for s in servers:
            for t in (replace(t, pid=s.proc.pid) for t in s.targets(case)):
                if t.workers == 1:
                    cells += [Cell(case, t, c) for c in case.levels]
                if len(counts) > 1 and s.label != "echo" and t.name != "KServe gRPC":
                    if t.kind == "grpc":
                        cells.append(Cell(case, replace(t, channels=0), worker_level,
                                          scaling=True))
                    elif t.workers > 1 or worker_level not in case.levels:
                        cells.append(Cell(case, t, worker_level, scaling=True))
        groups.append(cells)
    return groups


def estimate_seconds(groups: list[list[Cell]], args: argparse.Namespace) -> float:
    cells = sum(len(g) for g in groups)
    per_round = (cells * (args.warmup + args.duration + PER_CELL_OVERHEAD_S)
                 + len(groups) * min(args.duration, 1.0))
    return float(per_round * args.rounds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help="comma-separated NAME:VERSION from models/examples.yaml")
    parser.add_argument("--batches", default="1,64", help="rows per request")
    parser.add_argument("--levels", default="1,8,32",
                        help="concurrency levels of the first model at the first batch size")
    parser.add_argument("--other-levels", default="1,8",
                        help="concurrency levels of every other model and batch size")
    parser.add_argument("--workers", default="1,2",
                        help="worker processes per server (1 always; more: worker table)")
    parser.add_argument("--worker-level", type=int, default=8,
                        help="concurrency at which worker counts are compared")
    parser.add_argument("--peers", default="mlserver,kserve,sklearn-bento",
                        help="peers to run (comma-separated; '' for modelrail and floors)")
    parser.add_argument("--skip-peers", action="store_true", help="same as --peers ''")
    parser.add_argument("--warmup", type=float, default=0.4, help="seconds before each cell")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds; each figure is the median over rounds")
    parser.add_argument("--json", type=Path, default=None,
                        help="where the results go (default .modelrail/bench/serving.json; "
                             "serving-smoke.json with --no-report)")
    parser.add_argument("--no-report", action="store_true",
                        help="leave BENCHMARKS.md alone and print the section (smoke runs)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite BENCHMARKS.md from the last run's JSON")
    args = parser.parse_args()
    if args.json is None:
        args.json = WORK / ("serving-smoke.json" if args.no_report else "serving.json")
    args.refs = [r.strip() for r in args.models.split(",") if r.strip()]
    args.batch_list = [int(v) for v in args.batches.split(",")]
    args.level_list = [int(v) for v in args.levels.split(",")]
    args.other_level_list = [int(v) for v in args.other_levels.split(",")]
    args.worker_list = sorted({1, *(int(v) for v in args.workers.split(","))})
    args.peer_list = [] if args.skip_peers else [p for p in args.peers.split(",") if p]
    unknown = set(args.peer_list) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; known: {', '.join(PEERS)}")
    return args


def start_servers(models: list[Model], args: argparse.Namespace, logs: Path,
                  servers: list[Server]) -> None:
    """Start every server (each idles while another is measured), then wait for all."""
    servers.append(start_echo(logs))
    for w in args.worker_list:
        servers.append(start_modelrail(models, w, logs))
        if "mlserver" in args.peer_list:
            servers.append(start_mlserver(models, w, logs))
        if "kserve" in args.peer_list:
            servers.append(start_kserve(models, w, logs))
        if "sklearn-bento" in args.peer_list:
            servers.append(start_sklearn_bento(models, w, logs))
    for s in servers:
        s.wait()


Key = tuple[str, str, int, int, bool]


def measure(cases: list[Case], groups: list[list[Cell]], args: argparse.Namespace,
            ) -> tuple[dict[Key, list[Result]], dict[Key, Cell], dict[str, list[dict[str, float]]]]:
    runs: dict[Key, list[Result]] = {}
    meta: dict[Key, Cell] = {}
    floors: dict[str, list[dict[str, float]]] = {c.key: [] for c in cases}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for case, cells in zip(cases, groups, strict=True):
            floors[case.key].append(inprocess_floor(case, min(args.duration, 1.0)))
            shift = (r * len(cells)) // max(1, args.rounds)  # rotate the order per round
            for cell in cells[shift:] + cells[:shift]:
                res = measure_once(cell.target, cell.level, args.warmup, args.duration)
                runs.setdefault(cell.key, []).append(res)
                meta[cell.key] = cell
                tag = " (workers table)" if cell.key[4] else ""
                print(f"  {case.key:<22} {cell.target.name:<21} ×{cell.target.workers} "
                      f"c={cell.level:<3} {res.throughput:8.0f} req/s  "
                      f"p50 {res.percentile(0.5) * 1000:.3f} ms{tag}", flush=True)
    return runs, meta, floors


def main() -> int:
    args = parse_args()
    if args.report_only:
        write_report(json.loads(args.json.read_text()))
        return 0
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    models = [prepare_model(r) for r in args.refs]
    cases = [Case(m, b, args.level_list if (i, j) == (0, 0) else args.other_level_list)
             for i, m in enumerate(models) for j, b in enumerate(args.batch_list)]
    for p in args.peer_list:
        peer_python(p)
    results = header(models, cases, args)
    print(f"models {', '.join(m.ref for m in models)}; batches {args.batch_list}; workers "
          f"{args.worker_list}; peers {args.peer_list or 'none'}; loopback", flush=True)
    servers: list[Server] = []
    try:
        start_servers(models, args, logs, servers)
        print(f"{len(servers)} servers up after {time.monotonic() - began:.0f} s", flush=True)
        for case in cases:
            notes = check_answers(case, [t for s in servers for t in s.targets(case)])
            results["checks"][case.key] = notes
            print(f"answers checked, {case.key}: " + "; ".join(notes), flush=True)
        groups = plan(cases, servers, args.worker_level)
        print(f"{sum(len(g) for g in groups)} cells per round, {args.rounds} rounds: about "
              f"{estimate_seconds(groups, args) / 60:.1f} min of measuring", flush=True)
        runs, meta, floors = measure(cases, groups, args)
    finally:
        for s in servers:
            stop(s.proc)
    for key, rs in runs.items():
        cell = meta[key]
        results["cells"].append({"case": cell.case.key, "model": cell.case.model.ref,
                                 "batch": cell.case.batch, "target": cell.target.name,
                                 "workers": cell.target.workers, "level": cell.level,
                                 "channels": "per-client" if key[4] else "one",
                                 "scaling": cell.scaling, **_median_results(rs)})
    for case in cases:
        results["floors"].append({"case": case.key, "model": case.model.ref,
                                  "batch": case.batch, **_median_dicts(floors[case.key])})
    results["elapsed_s"] = round(time.monotonic() - began)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"done in {results['elapsed_s']} s; results in {args.json}", flush=True)
    if args.no_report:
        print(render_report(results))
    else:
        write_report(results)
    return 0


def header(models: list[Model], cases: list[Case], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": " ".join(shlex.quote(a) for a in ["benchmarks/serving.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "models": [{"ref": m.ref, "estimator": m.estimator,
                    "features": int(m.X_test.shape[1]), "output": m.output,
                    "sk_method": m.sk_method} for m in models],
        "batches": args.batch_list, "workers": args.worker_list,
        "worker_level": args.worker_level, "duration_s": args.duration,
        "warmup_s": args.warmup, "rounds": args.rounds, "peers": args.peer_list,
        "versions": versions(args.peer_list),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "cases": [{"case": c.key, "levels": c.levels} for c in cases],
        "cells": [], "floors": [], "checks": {}}


def versions(peers: list[str]) -> dict[str, str]:
    import importlib.metadata as md

    out = {"modelrail onnxruntime": md.version("onnxruntime"),
           "modelrail bentoml": md.version("bentoml")}
    for p in peers:
        out[p] = ", ".join(PEERS[p])
    return out


def _median_results(rs: list[Result]) -> dict[str, float]:
    """Medians over the rounds; `cpu_us`: the server's CPU per answered call (warm-up and
    connection set-up included), when it was read for every round."""
    return _median_dicts([{"rps": r.throughput, "p50_ms": r.percentile(0.5) * 1000,
                           "p99_ms": r.percentile(0.99) * 1000, "requests": r.requests,
                           **({"cpu_us": r.server_cpu_s / r.completed * 1e6}
                              if r.server_cpu_s is not None and r.completed else {})}
                          for r in rs])


def _median_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(statistics.median(d[k] for d in ds)) for k in ds[0]
            if all(k in d for d in ds)}


# --- the BENCHMARKS.md section ------------------------------------------------------------

ORDER = ["modelrail REST", "modelrail gRPC", "echo REST", "echo gRPC", "MLServer REST",
         "MLServer gRPC", "KServe REST", "KServe gRPC", "BentoML+sklearn REST"]
VERSUS = {"REST": ["MLServer REST", "KServe REST", "BentoML+sklearn REST", "echo REST"],
          "gRPC": ["MLServer gRPC", "KServe gRPC", "echo gRPC"]}


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "–"


def render_report(results: dict[str, Any]) -> str:
    cells = results["cells"]
    main = {(c["case"], c["target"], c["level"]): c for c in cells
            if c["workers"] == 1 and c["channels"] == "one"}
    levels = {c["case"]: c["levels"] for c in results["cases"]}
    lines = _intro(results) + _summary(main, levels)
    floors = {f["case"]: f for f in results["floors"]}
    models = {m["ref"]: m for m in results["models"]}
    for case, case_levels in levels.items():
        model_ref = case.rsplit(" ×", 1)[0]
        lines += _case_section(case, models[model_ref], case_levels, main, floors.get(case))
    if len(results["workers"]) > 1:
        lines += _workers_section(results, list(levels))
    return "\n".join(lines) + "\n"


def _intro(results: dict[str, Any]) -> list[str]:
    return [
        "## Serving (`benchmarks/serving.py`)", "",
        f"Command: `.venv/bin/python {results['command']}` ({results['started']}, "
        f"{results['machine']}, {results['elapsed_s'] / 60:.0f} min in all). Models: "
        + "; ".join(f"`{m['ref']}` ({m['estimator']}, {m['features']} features; modelrail and "
                    f"KServe asked for `{m['output']}`, MLServer and plain BentoML for "
                    f"`{m['sk_method']}`)" for m in results["models"])
        + f". Rows per request: {', '.join(str(b) for b in results['batches'])} (test rows, "
        f"repeated from the first when there are fewer). {results['warmup_s']:g} s of warm-up "
        f"and {results['duration_s']:g} s of measuring per cell, median of "
        f"{results['rounds']} interleaved rounds (all servers up, one measured at a time, "
        "the order rotated each round); one closed-loop load generator on the same machine. "
        "Every target's answer to the exact payload it is measured with was checked against "
        "modelrail's first. The tables per case: one worker process per server; the worker "
        "table at the end compares worker counts. Absolute numbers on a shared 2-core machine "
        "are noisy; read the ratios.", "",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in results["versions"].items()) + ".", "",
    ]


def _summary(main: dict[tuple[str, str, int], Any], levels: dict[str, list[int]],
             ) -> list[str]:
    def throughput(case: str, top: int, proto: str, other: str) -> str:
        a, b = main.get((case, f"modelrail {proto}", top)), main.get((case, other, top))
        a1, b1 = main.get((case, f"modelrail {proto}", 1)), main.get((case, other, 1))
        lat = f" ({_x(a1['p50_ms'], b1['p50_ms'])})" if a1 and b1 else ""
        return _x(a["rps"], b["rps"]) + lat if a and b else "–"

    def cpu(case: str, top: int, proto: str, other: str) -> str:
        a = main.get((case, f"modelrail {proto}", top), {})
        b = main.get((case, other, top), {})
        return _x(b["cpu_us"], a["cpu_us"]) if "cpu_us" in a and "cpu_us" in b else "–"

    speed = _versus_table(
        "Summary, one worker each: modelrail ÷ peer, throughput at the case's highest "
        "concurrency (p50 latency at c=1 in brackets; throughput higher and latency lower is "
        "better).", lambda p, o: f"{p} ÷ {o}", levels, throughput)
    cost = _versus_table(
        "Server CPU per request at the same concurrency: peer ÷ modelrail (the peer's user + "
        "system CPU, all its processes and threads, per answered call, divided by modelrail's; "
        "how many requests modelrail answers with the CPU one of the peer's costs, whoever "
        "gets the cores).", lambda p, o: f"{o} ÷ {p}", levels, cpu)
    return [*speed, "", *cost]


def _versus_table(intro: str, heading: Callable[[str, str], str], levels: dict[str, list[int]],
                  cell: Callable[[str, int, str, str], str]) -> list[str]:
    """One row per case at its highest concurrency, one column per (protocol, peer)."""
    pairs = [(p, o) for p, others in VERSUS.items() for o in others]
    lines = [intro, "", "| case | " + " | ".join(heading(p, o) for p, o in pairs) + " |",
             "|---" * (1 + len(pairs)) + "|"]
    for case, case_levels in levels.items():
        top = case_levels[-1]
        lines.append("| " + " | ".join([f"{case} c={top}"]
                                       + [cell(case, top, p, o) for p, o in pairs]) + " |")
    return lines


def _case_section(case: str, model: dict[str, Any], case_levels: list[int],
                  main: dict[tuple[str, str, int], Any], floor: dict[str, float] | None,
                  ) -> list[str]:
    batch = int(case.rsplit(" ×", 1)[1])
    high = case_levels[-1] if case_levels[-1] != 1 else None  # its p99 column, if any
    lines = ["", f"### `{model['ref']}` ({model['estimator']}), {batch} "
                 f"row{'s' if batch > 1 else ''} per request", "",
             "| target | " + " | ".join(f"req/s c={c}" for c in case_levels)
             + " | p50 ms c=1 | p99 ms c=1 |" + (f" p99 ms c={high} |" if high else "")
             + f" server CPU µs/req c={case_levels[-1]} |",
             "|---" * (len(case_levels) + 4 + bool(high)) + "|"]
    if floor:
        lines.append(f"| onnxruntime in-process | {floor['rps']:.0f} | "
                     + "– | " * (len(case_levels) - 1)
                     + f"{floor['p50_ms']:.3f} | {floor['p99_ms']:.3f} |"
                     + (" – |" if high else "") + f" {floor['p50_ms'] * 1000:.0f} |")
    for name in ORDER:
        by = {c: main[(case, name, c)] for c in case_levels if (case, name, c) in main}
        if not by:
            continue
        one, top = by.get(1), by.get(high) if high else None
        last = by.get(case_levels[-1], {})
        lines.append(f"| {name} | "
                     + " | ".join(f"{by[c]['rps']:.0f}" if c in by else "–" for c in case_levels)
                     + (f" | {one['p50_ms']:.3f} | {one['p99_ms']:.3f} |" if one
                        else " | – | – |")
                     + ((f" {top['p99_ms']:.3f} |" if top else " – |") if high else "")
                     + (f" {last['cpu_us']:.0f} |" if "cpu_us" in last else " – |"))
    lines += ["", "Ratios (modelrail ÷ peer; throughput higher is better, latency lower is "
                  "better):", ""]
    for proto, others in VERSUS.items():
        mine = {c: main[(case, f"modelrail {proto}", c)] for c in case_levels
                if (case, f"modelrail {proto}", c) in main}
        for other in others:
            theirs = {c: main[(case, other, c)] for c in case_levels if (case, other, c) in main}
            common = [c for c in case_levels if c in mine and c in theirs]
            if not common:
                continue
            tp = ", ".join(f"c={c}: {_x(mine[c]['rps'], theirs[c]['rps'])}" for c in common)
            lat = (f"; single-request p50 latency {_x(mine[1]['p50_ms'], theirs[1]['p50_ms'])}"
                   if 1 in common else "")
            lines.append(f"- {proto} vs {other}: throughput {tp}{lat}")
    if floor:
        per_row = f", {floor['p50_ms'] * 1000 / batch:.2f} µs per row" if batch > 1 else ""
        lines.append(f"- onnxruntime in-process floor: {floor['p50_ms'] * 1000:.1f} µs per call "
                     f"(p50{per_row}), {floor['rps']:.0f} calls/s on one thread")
    return lines


def _workers_section(results: dict[str, Any], cases: list[str]) -> list[str]:
    wl, counts = results["worker_level"], results["workers"]
    table = {(c["case"], c["target"], c["workers"]): c for c in results["cells"]
             if c["level"] == wl
             and (c["channels"] == "per-client" or c["target"].endswith("REST"))}
    lines = ["", f"### Worker processes (c={wl})", "",
             "modelrail: `MODELRAIL_WORKERS` (BentoML worker processes, each serving REST and "
             "gRPC on shared ports); MLServer: `parallel_workers` (×1 is 0: inference in the "
             "server process; ×N: one front-end process handing requests to N inference "
             "processes); KServe: `--workers` (N uvicorn REST processes; its gRPC server stays "
             "in the main process, so KServe gRPC is not in this table); plain BentoML: "
             "`workers`. gRPC here with one channel (connection) per closed-loop client, as "
             "HTTP has one connection per client, so that every process sharing a port is "
             "reached; the one-worker gRPC figure is measured again that way.", "",
             "| case | target | " + " | ".join(f"req/s ×{w}" for w in counts)
             + f" | ×{counts[-1]} ÷ ×1 | modelrail ÷ it at ×{counts[-1]} |",
             "|---" * (len(counts) + 4) + "|"]
    for case in cases:
        for name in ORDER:
            by = {w: table.get((case, name, w)) for w in counts}
            n, one = by[counts[-1]], by[1]
            if n is None or one is None:
                continue
            proto = "REST" if name.endswith("REST") else "gRPC"
            mine = table.get((case, f"modelrail {proto}", counts[-1]))
            vs = _x(mine["rps"], n["rps"]) if mine and not name.startswith("modelrail") else "–"
            rps = [f"{c['rps']:.0f}" if c else "–" for c in by.values()]
            lines.append(f"| {case} | {name} | " + " | ".join(rps)
                         + f" | {_x(n['rps'], one['rps'])} | {vs} |")
    return lines


def write_report(results: dict[str, Any]) -> None:
    write_section("serving", render_report(results))


if __name__ == "__main__":
    sys.exit(main())
