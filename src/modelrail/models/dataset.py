"""The data split that travels with a fitted model: training rows and held-out rows.

A split file is a NumPy `.npz` (loaded with pickling disabled) holding `X_train`, `y_train`,
`X_test`, `y_test` and optionally `feature_names` and `target_names`. Registration reads
it to fingerprint the training data, to run the parity gate and to evaluate the model on
the held-out rows. `train.py` writes these files; users write their own with `save_split`.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelrail.durable import atomic_write_bytes
from modelrail.errors import InvalidInputError

REQUIRED = ("X_train", "y_train", "X_test", "y_test")
ACCEPTED = ("an .npz file with 2-D numeric arrays X_train, X_test, 1-D arrays y_train, y_test "
            "(same row counts), and optionally feature_names, target_names (string arrays)")


@dataclass(frozen=True)
class Split:
    """Training and held-out rows of one model, with optional names."""

    X_train: npt.NDArray[np.float64]
    y_train: npt.NDArray[np.generic]
    X_test: npt.NDArray[np.float64]
    y_test: npt.NDArray[np.generic]
    feature_names: list[str] | None = None
    target_names: list[str] | None = None

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])


def fingerprint(X: npt.NDArray[np.generic], y: npt.NDArray[np.generic]) -> str:
    """sha256 over shape, dtype and C-ordered bytes of X then y: stable across machines."""
    h = hashlib.sha256()
    for arr in (X, y):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_split(path: Path, split: Split) -> None:
    """Write a split file that `load_split` accepts."""
    arrays: dict[str, npt.NDArray[np.generic]] = {
        "X_train": split.X_train, "y_train": split.y_train,
        "X_test": split.X_test, "y_test": split.y_test,
    }
    if split.feature_names is not None:
        arrays["feature_names"] = np.asarray(split.feature_names, dtype=np.str_)
    if split.target_names is not None:
        arrays["target_names"] = np.asarray(split.target_names, dtype=np.str_)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub wants positional arrays
    atomic_write_bytes(path, buf.getvalue())


def load_split(path: Path) -> Split:
    """Load and check a split file; every problem names the file, the array and the rule."""
    where = str(path)
    if not path.is_file():
        raise InvalidInputError("data file not found", where=where, accepted=ACCEPTED)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"not a readable .npz file ({exc})", where=where,
                                accepted=ACCEPTED) from exc
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise InvalidInputError(f"missing arrays {missing}", where=where, accepted=ACCEPTED)
    X_train, X_test = arrays["X_train"], arrays["X_test"]
    y_train, y_test = arrays["y_train"], arrays["y_test"]
    for key, arr in (("X_train", X_train), ("X_test", X_test)):
        if arr.ndim != 2 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.number):
            raise InvalidInputError(
                f"{key} must be a non-empty 2-D numeric array, got dtype {arr.dtype} shape "
                f"{arr.shape}", where=where, accepted=ACCEPTED)
        if not np.all(np.isfinite(arr)):
            raise InvalidInputError(f"{key} contains NaN or infinity", where=where,
                                    accepted="finite feature values")
    if X_train.shape[1] != X_test.shape[1]:
        raise InvalidInputError(
            f"X_train has {X_train.shape[1]} features but X_test has {X_test.shape[1]}",
            where=where, accepted=ACCEPTED)
    for key, y, X in (("y_train", y_train, X_train), ("y_test", y_test, X_test)):
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise InvalidInputError(
                f"{key} must be 1-D with one value per row ({X.shape[0]}), got shape {y.shape}",
                where=where, accepted=ACCEPTED)
    names = _names(arrays, "feature_names", where)
    if names is not None and len(names) != X_train.shape[1]:
        raise InvalidInputError(
            f"feature_names has {len(names)} names for {X_train.shape[1]} features",
            where=where, accepted="one name per column of X_train")
    return Split(X_train=X_train.astype(np.float64), y_train=y_train,
                 X_test=X_test.astype(np.float64), y_test=y_test, feature_names=names,
                 target_names=_names(arrays, "target_names", where))


def _names(arrays: dict[str, npt.NDArray[np.generic]], key: str, where: str) -> list[str] | None:
    if key not in arrays:
        return None
    arr = arrays[key]
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise InvalidInputError(f"{key} must be a 1-D string array, got {arr.dtype} {arr.shape}",
                                where=where, accepted=ACCEPTED)
    return [str(v) for v in arr.tolist()]
