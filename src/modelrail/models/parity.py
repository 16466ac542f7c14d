"""The parity gate: does the ONNX graph answer like the scikit-learn model?

Called by register.py before anything is stored. scikit-learn runs on the held-out rows as
the data scientist validated them (float64); onnxruntime runs the graph on the same rows as
the server will feed them (FP32). Rules:
  - classification: every label identical; every probability within TOL_ABS.
  - regression: every output within TOL_ABS + TOL_REL * |scikit-learn's output|. FP32 keeps
    about seven significant digits, so an absolute bound alone would be meaningless for
    targets in the hundreds (measured: 3.9e-5 absolute, 2.9e-7 relative on diabetes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modelrail.models.card import Parity
from modelrail.models.convert import INPUT_NAME, as_model_input
from modelrail.models.runtime import new_session

TOL_ABS = 1e-5
TOL_REL = 1e-5


@dataclass(frozen=True)
class ParityResult:
    """The figures and, when the gate fails, where it failed worst."""

    parity: Parity
    worst_row: int
    worst_input: list[float]
    worst_expected: float | int | str
    worst_got: float | int | str
    first_label_mismatch: int | None

    def report(self) -> str:
        p = self.parity
        lines = [
            f"parity {'passed' if p.passed else 'FAILED'} on {p.rows} held-out rows "
            f"(tolerance: |diff| <= {p.tolerance_abs:g} + {p.tolerance_rel:g}*|expected|)",
            f"  label mismatches: {p.label_mismatches}",
            f"  max |diff|: {p.max_abs_diff:.3e} (relative {p.max_rel_diff:.3e}) at row "
            f"{self.worst_row}: expected {self.worst_expected!r}, got {self.worst_got!r}",
            f"  input of row {self.worst_row}: {self.worst_input}",
        ]
        if self.first_label_mismatch is not None:
            lines.append(f"  first label mismatch at row {self.first_label_mismatch}")
        return "\n".join(lines)


def check_parity(estimator: Any, onnx_bytes: bytes, task: str,
                 X: npt.NDArray[np.float64]) -> ParityResult:
    """Run both models on X and compare; never raises for a mismatch, the caller decides."""
    session = new_session(onnx_bytes)
    outputs = {o.name: v for o, v in
               zip(session.get_outputs(), session.run(None, {INPUT_NAME: as_model_input(X)}),
                   strict=True)}
    if task == "classification":
        expected = np.asarray(estimator.predict_proba(X), dtype=np.float64)
        got = _output(outputs, "probabilities", expected.shape)
        ref_labels = np.asarray(estimator.predict(X))
        onnx_labels = np.asarray(outputs.get("label", np.full(len(X), None))).reshape(-1)
        mismatch = ref_labels != onnx_labels
        label_mismatches = int(mismatch.sum())
        first_mismatch = int(np.argmax(mismatch)) if label_mismatches else None
    else:
        expected = np.asarray(estimator.predict(X), dtype=np.float64).reshape(-1, 1)
        got = _output(outputs, "predictions", expected.shape)
        label_mismatches, first_mismatch = 0, None
    diff = np.abs(got - expected)
    diff = np.where(np.isnan(diff), np.inf, diff)
    rel = diff / np.maximum(np.abs(expected), 1e-12)
    allowed = TOL_ABS + TOL_REL * np.abs(expected)
    within = bool(np.all(diff <= allowed))
    worst = np.unravel_index(int(np.argmax(diff - allowed)), diff.shape)
    row = int(worst[0])
    if first_mismatch is not None:
        row = first_mismatch
        worst_expected: float | int | str = _scalar(ref_labels[row])
        worst_got: float | int | str = _scalar(onnx_labels[row])
    else:
        worst_expected, worst_got = float(expected[worst]), float(got[worst])
    parity = Parity(
        rows=int(X.shape[0]), label_mismatches=label_mismatches,
        max_abs_diff=float(diff.max()), max_rel_diff=float(rel.max()),
        tolerance_abs=TOL_ABS, tolerance_rel=TOL_REL,
        passed=within and label_mismatches == 0)
    return ParityResult(parity=parity, worst_row=row,
                        worst_input=[float(v) for v in X[row]],
                        worst_expected=worst_expected, worst_got=worst_got,
                        first_label_mismatch=first_mismatch)


def _output(outputs: dict[str, Any], name: str, shape: tuple[int, ...],
            ) -> npt.NDArray[np.float64]:
    """The named output as float64 in the expected shape; a missing output or one of another
    shape becomes all-NaN, which the comparison counts as an infinite difference."""
    value = outputs.get(name)
    if value is None:
        return np.full(shape, np.nan)
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == int(np.prod(shape)):
        return arr.reshape(shape)
    return np.full(shape, np.nan)


def _scalar(v: Any) -> float | int | str:
    item = v.item() if hasattr(v, "item") else v
    return item if isinstance(item, (int, float, str)) else str(item)
