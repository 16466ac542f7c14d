"""onnxruntime sessions, created one way everywhere (parity gate, server, benchmarks).

Only this module constructs `onnxruntime.InferenceSession`, so thread settings and the
telemetry switch are decided once.
"""

from __future__ import annotations

from typing import Any

import modelrail  # noqa: F401  # sets ORT_DISABLE_TELEMETRY before onnxruntime loads


def new_session(onnx_bytes: bytes, *, intra_op_threads: int = 1) -> Any:
    """A CPU session over the given graph; one intra-op thread suits small tabular models,
    where thread hand-off costs more than the arithmetic."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts,
                                providers=["CPUExecutionProvider"])
