"""Protocol-neutral inference: a decoded request in, output tensors out.

The REST and gRPC adapters decode their wire format into `InferRequest`, call `execute`,
and encode the `InferResponse`. Everything about the request is validated here before
onnxruntime sees it; no request shares a session.run with another, so one bad request can
never fail a good one. With MODELRAIL_BATCHING=adaptive, validated requests that reach
onnxruntime in the same event-loop turn share one call (batching.py); a joined call that
fails is retried request by request, so that guarantee holds there too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modelrail.serving import metrics
from modelrail.serving.batching import Batcher
from modelrail.serving.errors import InferenceError, Kind, invalid
from modelrail.serving.repository import LoadedModel, ModelRepository
from modelrail.serving.tensors import to_model_input

# Above this many input elements onnxruntime runs in a thread, so the event loop keeps
# serving other requests; below it the thread hop costs more than the inference.
THREAD_THRESHOLD = 16384


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: npt.NDArray[Any]


@dataclass
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass
class InferRequest:
    model_name: str
    model_version: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None  # None: every output
    id: str | None = None
    binary_output: bool = False


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: npt.NDArray[Any]
    binary: bool = False


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor] = field(default_factory=list)
    id: str | None = None
    rows: int = 0
    # seconds spent validating/converting the input and in onnxruntime (statistics extension)
    input_seconds: float = 0.0
    infer_seconds: float = 0.0


def describe_input(model: LoadedModel) -> str:
    spec = model.card.inputs[0]
    return f"one input {spec.name!r} of shape [rows, {spec.shape[-1]}]"


def prepare(model: LoadedModel, req: InferRequest, *,
            max_rows: int) -> npt.NDArray[np.float32]:
    """Validate the inputs against the model and return the FP32 rows to run."""
    spec = model.card.inputs[0]
    if len(req.inputs) == 1 and req.inputs[0].name == spec.name:  # the usual request
        tensor = req.inputs[0]
        return to_model_input(tensor.array, tensor.datatype, spec, max_rows=max_rows,
                              where=f"input {tensor.name!r}")
    names = [t.name for t in req.inputs]
    if len(set(names)) != len(names):
        raise invalid(f"inputs: an input is given twice ({names}); the model takes "
                      f"{describe_input(model)}")
    extra = [n for n in names if n != spec.name]
    if extra:
        raise invalid(f"inputs: unexpected input {extra[0]!r}; the model takes "
                      f"{describe_input(model)}")
    if not req.inputs:
        raise invalid(f"inputs: missing input {spec.name!r}; the model takes "
                      f"{describe_input(model)}")
    tensor = req.inputs[0]
    return to_model_input(tensor.array, tensor.datatype, spec, max_rows=max_rows,
                          where=f"input {tensor.name!r}")


def check_outputs(model: LoadedModel, req: InferRequest) -> list[RequestedOutput]:
    available = [o.name for o in model.card.outputs]
    if req.outputs is None or not req.outputs:
        return [RequestedOutput(name=n, binary=req.binary_output) for n in available]
    seen: set[str] = set()
    for o in req.outputs:
        if o.name not in available:
            raise invalid(f"outputs: unknown output {o.name[:64]!r}; available: "
                          f"{', '.join(available)}")
        if o.name in seen:
            raise invalid(f"outputs: {o.name!r} is requested twice; ask for each output "
                          f"once (available: {', '.join(available)})")
        seen.add(o.name)
    return req.outputs


async def execute(repo: ModelRepository, req: InferRequest, *, max_rows: int,
                  may_batch: bool = False) -> tuple[LoadedModel, InferResponse]:
    """Validate, run and shape one request. `may_batch`: the adapter's calls may share an
    onnxruntime call when MODELRAIL_BATCHING=adaptive (REST; measured in BENCHMARKS.md:
    grpc.aio hands the loop one call per turn, so gRPC batches were of one and only cost)."""
    started = time.perf_counter()
    model = repo.ready_model(req.model_name, req.model_version)
    x = prepare(model, req, max_rows=max_rows)
    wanted = check_outputs(model, req)
    prepared = time.perf_counter()
    if model.fault is not None:
        if model.fault.latency_ms:
            await asyncio.sleep(model.fault.latency_ms / 1000)
        if repo.faults.should_fail(model.fault):
            raise InferenceError(Kind.INTERNAL, f"injected fault in {model.card.ref}")
        if repo.faults.should_crash(model.fault):  # a bug, not a refusal: no InferenceError
            raise RuntimeError(f"injected crash in {model.card.ref}")
    infer_started = time.perf_counter()
    try:
        if x.size > THREAD_THRESHOLD:
            result = await asyncio.to_thread(model.run, x)
        elif may_batch and repo.batching:  # joined with this loop turn's (batching.py)
            if model.batcher is None:
                model.batcher = Batcher(model.run, max_elements=THREAD_THRESHOLD)
            result = await model.batcher.submit(x)
        else:
            result = model.run(x)
    except Exception as exc:  # onnxruntime's own error types are not exported
        raise InferenceError(Kind.INTERNAL, f"model {model.card.ref} failed: {exc}") from exc
    infer_seconds = time.perf_counter() - infer_started
    specs = {o.name: o for o in model.card.outputs}
    outputs = []
    for want in wanted:
        arr = np.asarray(result[want.name])
        spec = specs[want.name]
        outputs.append(OutputTensor(name=want.name, datatype=spec.datatype,
                                    shape=list(arr.shape), array=arr, binary=want.binary))
    metrics.observe_predictions(
        model=model.name, version=model.version, labels=result.get("label"),
        values=result.get("predictions"), bins=model.value_bins)
    return model, InferResponse(model_name=model.name, model_version=model.version,
                                outputs=outputs, id=req.id, rows=int(x.shape[0]),
                                input_seconds=prepared - started, infer_seconds=infer_seconds)
