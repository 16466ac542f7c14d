"""OIP v2 tensors: decoding JSON, raw bytes and gRPC contents, and converting them safely to
what the model takes (FP32 rows of n_features).

Policy, applied identically to REST and gRPC:
  - a shape is bounded before it is used (check_shape: dimensions, each dimension, the
    element count; see serving.config.Limits), so no work grows with a hostile shape;
  - shape must be [rows, n_features] with 1 <= rows <= max_rows, and the data must hold
    exactly rows * n_features elements;
  - FP32 as-is; FP16 widened; FP64 narrowed to FP32 (finite values beyond FP32's range are
    refused); integer types only when every value is exactly representable in FP32
    (|v| <= 2**24); BOOL and BYTES are refused;
  - NaN and ±inf are refused (scikit-learn's models were not trained to see them and the
    graph would answer silently wrong); the error names the row and the feature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from modelrail.models.card import TensorSpec
from modelrail.serving.config import Limits
from modelrail.serving.errors import invalid

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
ALL_DATATYPES = (*NUMPY_DTYPES, "BYTES")
ACCEPTED_INPUT = ("FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8",
                  "UINT16", "UINT32", "UINT64")
FP32_EXACT_INT = 2**24
FP32_MAX = float(np.finfo(np.float32).max)


def check_datatype(datatype: Any, where: str) -> str:
    if not isinstance(datatype, str) or datatype not in ALL_DATATYPES:
        raise invalid(f"{where}: unknown datatype {datatype!r}; accepted: "
                      f"{', '.join(ACCEPTED_INPUT)}")
    return datatype


def check_shape(shape: Any, where: str, limits: Limits) -> list[int]:
    """A shape as a list of ints, bounded before anything proportional to it runs.

    The number of dimensions is checked first (one len()), then each dimension, then the
    element count, multiplied up one dimension at a time and never past the limit, so a
    hostile shape (a million dimensions, 2**63) costs no more than a good one.
    """
    if not isinstance(shape, (list, tuple)) and not _is_repeated(shape):
        raise invalid(f"{where}: shape must be a non-empty list of integers, got "
                      f"{type(shape).__name__}")
    if not 1 <= len(shape) <= limits.max_dims:
        raise invalid(f"{where}: shape has {len(shape)} dimensions; accepted: 1 to "
                      f"{limits.max_dims} (MODELRAIL_MAX_DIMS)")
    dims: list[int] = []
    count = 1
    for i, d in enumerate(shape):
        if not isinstance(d, int) or isinstance(d, bool):
            raise invalid(f"{where}: shape[{i}] is {_short(d)}; accepted: integers")
        if d < 0:
            raise invalid(f"{where}: shape[{i}] is {d}; a negative dimension is not accepted")
        if d > limits.max_elements:
            raise invalid(f"{where}: shape[{i}] is {_short(d)}; accepted: at most "
                          f"{limits.max_elements} (MODELRAIL_MAX_ELEMENTS)")
        dims.append(int(d))
        count *= d
        if count > limits.max_elements:
            raise invalid(f"{where}: shape {_short(dims)}... holds more than "
                          f"{limits.max_elements} elements, the limit per tensor "
                          "(MODELRAIL_MAX_ELEMENTS); split the request")
    return dims


def _is_repeated(value: Any) -> bool:
    # a protobuf repeated scalar field (gRPC shapes): sized and indexable, not a list
    return hasattr(value, "__len__") and hasattr(value, "__getitem__") and not isinstance(
        value, (str, bytes, dict))


def _short(value: Any, limit: int = 60) -> str:
    """repr() cut to `limit` characters: messages must not echo a hostile payload back."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for str() (Python's 4300-digit limit)
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else text[:limit] + "…"


def element_count(shape: Sequence[int]) -> int:
    """Elements of a shape already bounded by check_shape."""
    return math.prod(shape)


def from_json(data: Any, datatype: str, shape: list[int], where: str) -> npt.NDArray[Any]:
    """A JSON `data` field (flat or nested, row-major) as an array of `datatype`."""
    if datatype == "BYTES":
        raise invalid(f"{where}: datatype BYTES is not accepted; accepted: "
                      f"{', '.join(ACCEPTED_INPUT)}")
    expected = element_count(shape)
    fast = _plain_numbers(data, datatype, expected)
    if fast is not None:
        return fast.reshape(shape)
    flat = _flatten(data, where, expected)
    if len(flat) != expected:
        raise invalid(f"{where}: data has {len(flat)} elements but shape {shape} needs "
                      f"{expected}")
    is_int = datatype.startswith(("INT", "UINT"))
    for i, v in enumerate(flat):
        if isinstance(v, bool) and datatype != "BOOL":
            raise invalid(f"{where}: data[{i}] is a boolean; {datatype} takes numbers")
        if datatype == "BOOL" and not isinstance(v, bool):
            raise invalid(f"{where}: data[{i}] is {_short(v)}; BOOL takes true/false")
        if is_int and not isinstance(v, int):
            raise invalid(f"{where}: data[{i}] is {_short(v)}; {datatype} takes integers")
        if not isinstance(v, (int, float)):
            raise invalid(f"{where}: data[{i}] is {type(v).__name__} {_short(v)}; "
                          f"{datatype} takes numbers")
    dtype = NUMPY_DTYPES[datatype]
    if is_int:
        info = np.iinfo(dtype)
        for i, v in enumerate(flat):
            if not info.min <= v <= info.max:
                raise invalid(f"{where}: data[{i}] = {_short(v)} is out of range for "
                              f"{datatype}")
    try:
        arr = np.asarray(flat, dtype=dtype)
    except (OverflowError, ValueError) as exc:
        raise invalid(f"{where}: data does not fit {datatype}: {_short(str(exc))}") from exc
    return arr.reshape(shape)


# The JSON value types each datatype takes as-is (exact types: json and orjson make no
# subclasses, and bool is not int here, so `true` in an FP32 tensor is not taken).
_PLAIN_TYPES: dict[str, frozenset[type]] = {
    **{d: frozenset({float, int}) for d in ("FP16", "FP32", "FP64")},
    **{d: frozenset({int}) for d in ACCEPTED_INPUT if d.startswith(("INT", "UINT"))},
    "BOOL": frozenset({bool}),
}


def _plain_numbers(data: Any, datatype: str, expected: int) -> npt.NDArray[Any] | None:
    """The common case at C speed: a flat list, or a list of row lists, of exactly
    `expected` values of the types `datatype` takes, converted by numpy (integers
    range-checked). None for anything else — deeper nesting, a wrong count or type, an
    integer out of range — which `from_json`'s element-by-element path then checks and
    names precisely. Both paths take and refuse the same documents."""
    if type(data) is not list or len(data) > expected:
        return None
    values: Any = data
    if data and type(data[0]) is list:  # rows: numpy reads the nested lists itself
        if any(type(row) is not list for row in data):
            return None
        values = chain.from_iterable(data)
    elif len(data) != expected:
        return None
    if not set(map(type, values)) <= _PLAIN_TYPES[datatype]:
        return None
    dtype = NUMPY_DTYPES[datatype]
    try:
        if datatype.startswith(("INT", "UINT")):
            wide = np.asarray(data, dtype=np.uint64 if datatype == "UINT64" else np.int64)
            info = np.iinfo(dtype)
            if wide.size and (wide.min() < info.min or wide.max() > info.max):
                return None
            arr = wide.astype(dtype)
        else:
            arr = np.asarray(data, dtype=dtype)
    except (OverflowError, ValueError):  # ragged rows, or an integer beyond 64 bits
        return None
    return arr.reshape(-1) if arr.size == expected else None


def _flatten(data: Any, where: str, expected: int) -> list[Any]:
    """The leaves of a nested list, row-major; stops as soon as there are too many."""
    if not isinstance(data, list):
        raise invalid(f"{where}: data must be a JSON array, got {type(data).__name__}")
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        try:
            item = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(item, list):
            if len(stack) > 32:
                raise invalid(f"{where}: data is nested more than 32 levels deep")
            stack.append(iter(item))
        else:
            out.append(item)
            if len(out) > expected:
                raise invalid(f"{where}: data has more than the {expected} elements its "
                              "shape needs")
    return out


def from_typed(values: Any, datatype: str, shape: list[int],
               where: str) -> npt.NDArray[Any]:
    """A gRPC typed `contents` field (already typed by protobuf: no per-element checks in
    Python) as an array of `datatype`; narrower integer types are range-checked."""
    expected = element_count(shape)
    if len(values) != expected:
        raise invalid(f"{where}: data has {len(values)} elements but shape {shape} "
                      f"needs {expected}")
    dtype = NUMPY_DTYPES[datatype]
    if datatype.startswith(("INT", "UINT")):
        wide = np.asarray(values, dtype=np.uint64 if datatype == "UINT64" else np.int64)
        info = np.iinfo(dtype)
        bad = (wide < info.min) | (wide > info.max)
        if bad.any():
            i = int(np.argmax(bad))
            raise invalid(f"{where}: contents[{i}] = {wide[i]} is out of range for {datatype}")
        return wide.astype(dtype).reshape(shape)
    if datatype == "BOOL":
        return np.asarray(values, dtype=np.bool_).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def from_raw(buf: bytes | memoryview, datatype: str, shape: list[int],
             where: str) -> npt.NDArray[Any]:
    """Row-major little-endian raw bytes (binary extension / gRPC raw contents) as an array."""
    if datatype == "BYTES":
        raise invalid(f"{where}: datatype BYTES is not accepted; accepted: "
                      f"{', '.join(ACCEPTED_INPUT)}")
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    expected = element_count(shape) * dtype.itemsize
    if len(buf) != expected:
        raise invalid(f"{where}: raw data has {len(buf)} bytes but shape {shape} of "
                      f"{datatype} needs {expected}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def to_model_input(arr: npt.NDArray[Any], datatype: str, spec: TensorSpec, *,
                   max_rows: int, where: str) -> npt.NDArray[np.float32]:
    """Check an input against the model's input spec and convert it to FP32 safely."""
    n_features = spec.shape[-1]
    if arr.ndim != 2 or arr.shape[1] != n_features or arr.shape[0] < 1:
        names = _feature_names(spec)
        raise invalid(f"{where}: shape {list(arr.shape)} is not accepted; accepted: "
                      f"[rows, {n_features}] with 1 <= rows <= {max_rows} (features: "
                      f"{', '.join(names)})")
    if arr.shape[0] > max_rows:
        raise invalid(f"{where}: {arr.shape[0]} rows exceed the limit of {max_rows} per "
                      "request; split the request")
    if datatype not in ACCEPTED_INPUT:
        raise invalid(f"{where}: datatype {datatype} is not accepted; accepted: "
                      f"{', '.join(ACCEPTED_INPUT)}")
    if datatype in ("FP32", "FP64", "FP16"):
        if not np.isfinite(arr).all():  # one pass in the usual case; details only if bad
            names = _feature_names(spec)
            row, col = (int(v) for v in np.argwhere(~np.isfinite(arr))[0])
            raise invalid(f"{where}: row {row}, feature {names[col]!r} is {arr[row, col]}; "
                          "NaN and infinity are not accepted")
        if datatype == "FP64" and np.abs(arr).max(initial=0.0) > FP32_MAX:
            names = _feature_names(spec)
            row, col = (int(v) for v in np.argwhere(np.abs(arr) > FP32_MAX)[0])
            raise invalid(f"{where}: row {row}, feature {names[col]!r} = {arr[row, col]} is "
                          f"beyond FP32's range (±{FP32_MAX:.4g}) the model computes in")
    else:
        too_big = np.abs(arr.astype(np.float64)) > FP32_EXACT_INT
        if too_big.any():
            names = _feature_names(spec)
            row, col = (int(v) for v in np.argwhere(too_big)[0])
            raise invalid(f"{where}: row {row}, feature {names[col]!r} = {arr[row, col]} "
                          f"cannot be represented exactly in FP32; integers are accepted "
                          f"up to ±{FP32_EXACT_INT}, send FP32/FP64 for larger values")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _feature_names(spec: TensorSpec) -> list[str]:
    return spec.feature_names or [f"x{i}" for i in range(spec.shape[-1])]


def to_raw(arr: npt.NDArray[Any], datatype: str) -> bytes:
    """Row-major little-endian bytes of an output tensor (BYTES: 4-byte length prefixes)."""
    if datatype == "BYTES":
        parts = []
        for item in arr.reshape(-1).tolist():
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(len(raw).to_bytes(4, "little") + raw)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=NUMPY_DTYPES[datatype].newbyteorder("<")).tobytes()


def to_json_data(arr: npt.NDArray[Any], datatype: str) -> list[Any]:
    flat = arr.reshape(-1)
    if datatype == "BYTES":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    return list(flat.tolist())
