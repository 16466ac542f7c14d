"""Peer: KServe's Python model server (`kserve.ModelServer`, from PyPI) serving the same ONNX
graphs as modelrail with the same onnxruntime version and session settings (one intra-op and
one inter-op thread), through a small `kserve.Model` written the way KServe's documentation
writes a custom v2 model. Runs in its own virtual environment (benchmarks/serving.py).

    python kserve_model.py --onnx NAME=PATH [--onnx NAME=PATH ...] --http_port P --grpc_port G
                           [--workers N] [--enable_latency_logging false]

Every `--onnx` is one model answering OIP v2 at /v2/models/NAME/infer (REST; KServe 0.21
refuses model versions) and through GRPCInferenceService/ModelInfer. Requested `outputs` are
honoured (all of the graph's outputs when none is asked for). The other flags are KServe's own
(its module-level parser reads them from the command line); `--workers N` starts N uvicorn
REST processes, the gRPC server stays in the main process.

Three departures from KServe's defaults, all about the benchmark rather than the server:
- both servers are bound to 127.0.0.1 (KServe binds 0.0.0.0 and [::]; the benchmark is
  loopback only);
- per-request log lines are off (uvicorn's access log, the latency and timing lines and
  the gRPC method line are INFO; their loggers are raised to WARNING), as modelrail's
  access log is off by default;
- with `--workers N > 1`, a REST worker is given 60 s instead of 5 s to answer KServe's
  liveness ping (see `_patient_worker_checks`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import kserve
import numpy as np
import onnxruntime as ort
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse
from kserve.logging import KSERVE_LOG_CONFIG
from kserve.utils.numpy_codec import from_np_dtype
from kserve.utils.utils import generate_uuid


class OnnxModel(kserve.Model):  # type: ignore[misc]
    """One ONNX graph; a module-level class, so KServe's spawned REST workers unpickle it."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(self.path, sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    # REST workers (--workers > 1) receive the models pickled; an onnxruntime session does
    # not pickle, so each worker loads its own
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("session", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.load()

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                ) -> InferResponse:
        x = np.asarray(payload.inputs[0].as_numpy(), dtype=np.float32)
        wanted = ([o.name for o in payload.request_outputs] if payload.request_outputs
                  else self.output_names)
        results = self.session.run(wanted, {self.input_name: x})
        outputs = [InferOutput(name=name, shape=list(r.shape), datatype=from_np_dtype(r.dtype),
                               data=r)
                   for name, r in zip(wanted, results, strict=True)]
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name,
                             infer_outputs=outputs)



def _parse() -> dict[str, str]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--onnx", action="append", default=[])
    args, _ = parser.parse_known_args()
    models = dict(spec.split("=", 1) for spec in args.onnx)
    if not models:
        sys.exit("kserve_model.py: at least one --onnx NAME=PATH")
    return dict(models)


# KServe configures logging from this dict in the server and again in every REST worker it
# spawns (or respawns: a worker slow to answer its 5 s ping at start is replaced, and the
# replacement is not given --log_config_file), so the per-request loggers are quietened here,
# at import, which runs in every one of those processes.
for _name in ("kserve", "kserve.trace", "uvicorn.access"):
    KSERVE_LOG_CONFIG["loggers"][_name]["level"] = "WARNING"


class LoopbackConfig(uvicorn.Config):  # type: ignore[misc]
    """uvicorn's configuration bound to 127.0.0.1 (module level: REST workers unpickle it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["host"] = "127.0.0.1"
        super().__init__(*args, **kwargs)


def _patient_worker_checks() -> None:
    """KServe's server pings each REST worker every 0.5 s and replaces one that does not answer
    within 5 s; a worker answers only once it has imported kserve and unpickled the models,
    which on this loaded 2-core machine can take longer, so workers were replaced forever and
    the REST port never answered. Allow 60 s (a worker hung for good is still replaced)."""
    from kserve.protocol.rest.multiprocess import server as multiprocess

    check = multiprocess.RESTServerProcess.is_alive

    def is_alive(self: Any, timeout: float = 60) -> bool:
        return bool(check(self, timeout))

    multiprocess.RESTServerProcess.is_alive = is_alive  # type: ignore[method-assign]


def _loopback_only() -> None:
    """Bind KServe's REST (uvicorn) and gRPC servers to 127.0.0.1 instead of every interface."""
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.rest import server as rest_server

    rest_server.uvicorn.Config = LoopbackConfig  # type: ignore[misc]

    real_aio = grpc_server.aio

    class LoopbackAio:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_aio, name)

        @staticmethod
        def server(*args: Any, **kwargs: Any) -> Any:
            srv = real_aio.server(*args, **kwargs)
            add = srv.add_insecure_port
            srv.add_insecure_port = lambda address: add(address.replace("[::]", "127.0.0.1"))
            return srv

    grpc_server.aio = LoopbackAio()  # type: ignore[assignment]


def main() -> None:
    models = _parse()
    _loopback_only()
    _patient_worker_checks()
    kserve.ModelServer().start([OnnxModel(name, path) for name, path in models.items()])


if __name__ == "__main__":
    main()
