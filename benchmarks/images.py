"""Container images benchmark: sizes, build times (cold and cached), start → ready and
serving throughput of the inference image run as the Deployment says, each against the
bare process it replaces, side by side in one run (interleaved rounds, medians).

    .venv/bin/python benchmarks/images.py [--rounds 3] [--seconds 6]

Everything stays on this machine: containers on the internal `modelrail` network, the
process on 127.0.0.1. Results: .modelrail/bench/images.json and the images section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".modelrail" / "bench"
os.environ.setdefault("BENTOML_HOME", str(WORK / "bentoml"))
os.environ.setdefault("MODELRAIL_REGISTRY", str(WORK / "registry"))
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from benchmarks.loadgen import http_request, run_grpc, run_http  # noqa: E402
from benchmarks.sections import write_section  # noqa: E402
from modelrail.images import podman  # noqa: E402
from modelrail.images.base import ensure_base  # noqa: E402
from modelrail.images.build import build_image, build_inference  # noqa: E402
from modelrail.images.podspec import container_run  # noqa: E402
from modelrail.images.run import PodContainer  # noqa: E402
from modelrail.images.wheelhouse import ensure_wheelhouse  # noqa: E402
from modelrail.infra import manifests  # noqa: E402
from modelrail.infra.config import ModelSpec, load_stack  # noqa: E402
from modelrail.processes import server_command, spawn, stop, wait_ready  # noqa: E402
from modelrail.serving._proto import oip_v2_pb2 as pb  # noqa: E402
from modelrail.serving.config import ModelRef, ServingConfig  # noqa: E402

ROW = [5.1, 3.5, 1.4, 0.2]
REST_BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                    "data": ROW}],
                        "outputs": [{"name": "probabilities"}]}).encode()
GRPC_BODY = pb.ModelInferRequest(
    model_name="iris", model_version="1",
    inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=[1, 4],
        contents=pb.InferTensorContents(fp32_contents=ROW))],
    outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
).SerializeToString()
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def prepare() -> None:
    from modelrail.models.register import register_model
    from modelrail.models.registry import Registry
    from modelrail.models.train import load_spec, train_all

    for t in train_all(load_spec(ROOT / "models" / "examples.yaml"), WORK / "train",
                       ["iris:1", "iris:2"]):
        register_model(model_path=t.model_path, data_path=t.data_path, name=t.name,
                       version=t.version, registry=Registry())


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def build_times() -> dict[str, Any]:
    out: dict[str, Any] = {}
    _, out["base_cold_s"] = timed(lambda: ensure_base(ref="localhost/modelrail/bench-base:cold",
                                                      force=True))
    podman.remove_image("localhost/modelrail/bench-base:cold")
    with tempfile.TemporaryDirectory(prefix="modelrail-bench-cache-") as cache:
        os.environ["MODELRAIL_CACHE"] = cache
        os.environ["PIP_NO_CACHE_DIR"] = "1"  # from PyPI, not pip's own cache
        try:
            for kind in ("inference", "controller", "loadtest"):
                _, out[f"wheelhouse_cold_{kind}_s"] = timed(
                    lambda k=kind: ensure_wheelhouse(ROOT / "services" / k / "requirements.txt"))
        finally:
            os.environ.pop("MODELRAIL_CACHE")
            os.environ.pop("PIP_NO_CACHE_DIR")
    refs = [ModelRef("iris", "1"), ModelRef("iris", "2")]
    for kind in ("inference", "controller", "loadtest"):
        def build(force: bool, k: str = kind) -> Any:
            return build_inference(refs, force=force) if k == "inference" else build_image(
                k, force=force)
        img, out[f"{kind}_build_s"] = timed(lambda b=build: b(True))
        again, out[f"{kind}_cached_s"] = timed(lambda b=build: b(False))
        assert not again.built
        out[f"{kind}_size_mib"] = img.size_bytes / 2**20
        out[f"{kind}_ref"] = img.ref
    base = podman.inspect_image(ensure_base().ref)
    out["base_size_mib"] = int(base["Size"]) / 2**20
    return out


def start_process() -> tuple[Any, str, str]:
    from modelrail.processes import free_port

    http_port, grpc_port = free_port(), free_port()
    cfg = ServingConfig(models=(ModelRef("iris", "1"),), grpc_port=grpc_port,
                        grpc_host="127.0.0.1", workers=1)
    proc = spawn(server_command(cfg, http_host="127.0.0.1", http_port=http_port),
                 log_path=WORK / "images-process.log")
    return proc, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"


def start_container(image: str, n: int) -> tuple[PodContainer, str, str]:
    cfg = load_stack("dev", ROOT)
    spec = manifests.model_deployment(cfg, ModelSpec(name="iris", version="1"))
    run = container_run(spec["spec"]["template"]["spec"], name=f"mr-bench-{n}",
                        network=podman.NETWORK, image=image)
    c = PodContainer.start(run)
    return c, c.url("http"), c.target("grpc")


def start_to_ready(image: str, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"process": [], "container": []}
    for n in range(rounds):
        t0 = time.monotonic()
        proc, url, _ = start_process()
        assert wait_ready(url, timeout=120, proc=proc)
        out["process"].append(time.monotonic() - t0)
        stop(proc)
        t0 = time.monotonic()
        c, url, _ = start_container(image, n)
        try:
            assert wait_ready(url, timeout=120), c.logs()[-2000:]
            out["container"].append(time.monotonic() - t0)
        finally:
            c.stop(grace=10)
    return out


def throughput(image: str, rounds: int, seconds: float) -> dict[str, dict[str, float]]:
    proc, purl, pgrpc = start_process()
    c, curl, cgrpc = start_container(image, 99)
    try:
        assert wait_ready(purl, timeout=120, proc=proc) and wait_ready(curl, timeout=120)
        samples: dict[str, list[float]] = {}
        for _ in range(rounds):
            for who, url, grpc_target in (("process", purl, pgrpc), ("container", curl, cgrpc)):
                host, port = url.removeprefix("http://").split(":")
                for conc in (1, 8):
                    req = http_request(host, int(port), "/v2/models/iris/versions/1/infer",
                                       REST_BODY)
                    r = asyncio.run(run_http(host, int(port), req, concurrency=conc,
                                             warmup=1.0, duration=seconds))
                    assert r.errors == 0
                    samples.setdefault(f"{who} rest c={conc}", []).append(r.throughput)
                    g = asyncio.run(run_grpc(grpc_target, GRPC_METHOD, GRPC_BODY,
                                             concurrency=conc, warmup=1.0, duration=seconds))
                    assert g.errors == 0
                    samples.setdefault(f"{who} grpc c={conc}", []).append(g.throughput)
        return {"median": {k: statistics.median(v) for k, v in samples.items()}}
    finally:
        stop(proc)
        c.stop(grace=10)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args()
    prepare()
    builds = build_times()
    image = builds["inference_ref"]
    ready = start_to_ready(image, args.rounds + 2)
    tput = throughput(image, args.rounds, args.seconds)["median"]
    results = {"builds": builds, "start_to_ready": ready, "throughput": tput,
               "when": time.strftime("%Y-%m-%d")}
    (WORK / "images.json").write_text(json.dumps(results, indent=2))
    write_report(results)
    return 0


def write_report(r: dict[str, Any]) -> None:
    b, ready, t = r["builds"], r["start_to_ready"], r["throughput"]
    pm, cm = statistics.median(ready["process"]), statistics.median(ready["container"])
    lines = [
        "## Container images (`benchmarks/images.py`)", "",
        f"One run ({r['when']}), `.venv/bin/python benchmarks/images.py`: builds with "
        "podman+runc and no network; the inference image (iris:1 and iris:2) run as the "
        "dev stack's Deployment says (1 CPU, 512 MiB limit, read-only root, non-root), "
        "against the bare `bentoml serve` process on loopback; the same load generator "
        "(benchmarks/loadgen.py) for both, interleaved rounds, medians.", "",
        "| image | size | cold build | cached (found by content) |",
        "|---|---|---|---|",
        f"| base (debootstrap bookworm minbase + Python 3.11) | {b['base_size_mib']:.0f} MiB "
        f"| {b['base_cold_s']:.0f} s | – |",
    ]
    for kind in ("inference", "controller", "loadtest"):
        lines.append(f"| {kind} | {b[f'{kind}_size_mib']:.0f} MiB | {b[f'{kind}_build_s']:.0f} s"
                     f" (+ wheelhouse from PyPI {b[f'wheelhouse_cold_{kind}_s']:.0f} s) | "
                     f"{b[f'{kind}_cached_s']:.1f} s |")
    lines += ["", "| start → ready | process | container | ratio |", "|---|---|---|---|",
              f"| median of {len(ready['process'])} | {pm:.1f} s | {cm:.1f} s | "
              f"{cm / pm:.2f}× |", "",
              "| throughput (req/s) | process | container | container / process |",
              "|---|---|---|---|"]
    for proto in ("rest", "grpc"):
        for conc in (1, 8):
            pv, cv = t[f"process {proto} c={conc}"], t[f"container {proto} c={conc}"]
            lines.append(f"| {proto.upper()} c={conc} | {pv:.0f} | {cv:.0f} | {cv / pv:.2f}× |")
    write_section("images", "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
