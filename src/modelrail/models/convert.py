"""scikit-learn → ONNX with skl2onnx, with stable tensor names.

Called by register.py. The graph always takes one FP32 tensor named `input` of shape
[-1, n_features]; classifiers answer `label` and `probabilities` (a plain tensor, no ZipMap),
regressors answer `predictions` of shape [-1, 1]. The target opset is pinned so the same
estimator always converts to the same bytes.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelrail.errors import ConversionError, InvalidInputError
from modelrail.models.card import Task

INPUT_NAME = "input"
# Pinned opsets: supported by every onnxruntime from 1.15 on, and by skl2onnx's converters.
TARGET_OPSET: dict[str, int] = {"": 18, "ai.onnx.ml": 3}
_REGRESSION_OUTPUT = "predictions"


@dataclass(frozen=True)
class Converted:
    """The ONNX bytes and what the converter decided about the model."""

    onnx_bytes: bytes
    task: Task
    estimator: str  # readable, e.g. "Pipeline(StandardScaler, LogisticRegression)"


def describe(estimator: Any) -> str:
    """A readable name for an estimator, spelling out the steps of a Pipeline."""
    steps = getattr(estimator, "steps", None)
    if steps:
        return f"{type(estimator).__name__}({', '.join(describe(s) for _, s in steps)})"
    return type(estimator).__name__


def final_estimator(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return final_estimator(steps[-1][1]) if steps else estimator


def task_of(estimator: Any) -> Task:
    """"classification" if the model has predict_proba and classes_, else "regression"."""
    last = final_estimator(estimator)
    if getattr(last, "_estimator_type", None) == "classifier" or (
        hasattr(last, "classes_") and hasattr(estimator, "predict_proba")
    ):
        return "classification"
    return "regression"


def load_estimator(path: Path) -> Any:
    """Load a fitted scikit-learn model saved with joblib or pickle.

    Unpickling runs code from the file: only register model files you trust (the same rule
    as scikit-learn's own persistence docs).
    """
    import joblib  # scikit-learn's persistence library; imported here to keep imports light
    from sklearn.base import BaseEstimator
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    where = str(path)
    accepted = "a fitted scikit-learn estimator or Pipeline saved with joblib.dump or pickle"
    if not path.is_file():
        raise InvalidInputError("model file not found", where=where, accepted=accepted)
    try:
        est = joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, OSError, IndexError,
            ModuleNotFoundError, AttributeError) as exc:
        raise InvalidInputError(f"cannot load the model file ({type(exc).__name__}: {exc})",
                                where=where, accepted=accepted) from exc
    if not isinstance(est, BaseEstimator) or not hasattr(est, "predict"):
        raise InvalidInputError(f"the file holds a {type(est).__name__}, not an estimator",
                                where=where, accepted=accepted)
    try:
        check_is_fitted(est)
    except NotFittedError as exc:
        raise InvalidInputError(f"{describe(est)} is not fitted", where=where,
                                accepted=accepted) from exc
    return est


def convert(estimator: Any, n_features: int) -> Converted:
    """Convert a fitted estimator; an unsupported one gets an error naming it and the options."""
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from skl2onnx.common.exceptions import MissingShapeCalculator

    task = task_of(estimator)
    options: dict[int, dict[str, Any]] | None = None
    if task == "classification":
        options = {id(final_estimator(estimator)): {"zipmap": False}}
    try:
        model = to_onnx(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options=options,
            target_opset=TARGET_OPSET,
        )
    except MissingShapeCalculator as exc:
        raise ConversionError(
            f"skl2onnx has no converter for a step of {describe(estimator)}: "
            f"{_unsupported_step(estimator)}",
            where="model",
            accepted="estimators and transformers skl2onnx supports: "
                     + ", ".join(supported_estimators())) from exc
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        raise ConversionError(f"skl2onnx failed to convert {describe(estimator)}: {exc}",
                              where="model",
                              accepted="a model skl2onnx can convert (see its docs)") from exc
    if task == "regression":
        _rename_output(model, _REGRESSION_OUTPUT)
    _sort_opsets(model)
    onnx.checker.check_model(model)
    return Converted(onnx_bytes=model.SerializeToString(), task=task,
                     estimator=describe(estimator))


def _sort_opsets(model: Any) -> None:
    """Opset imports in domain order. skl2onnx lists them in a set's order, which follows
    the process's string hash seed: the same estimator converted in two processes came out
    as two different byte strings (two fingerprints) about half the time."""
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)


def _converter_map() -> dict[type, str]:
    # skl2onnx's class → converter alias map. Its public supported_converters() returns
    # aliases ("Scaler" for StandardScaler), which cannot be matched against class names.
    from skl2onnx._supported_operators import sklearn_operator_name_map

    return dict(sklearn_operator_name_map)


def supported_estimators() -> list[str]:
    """Class names of the scikit-learn estimators and transformers skl2onnx converts."""
    return sorted({cls.__name__ for cls in _converter_map()})


def _unsupported_step(estimator: Any) -> str:
    supported = _converter_map()
    steps = getattr(estimator, "steps", None)
    candidates = [s for _, s in steps] if steps else [estimator]
    names = [type(s).__name__ for s in candidates if type(s) not in supported]
    return ", ".join(names) if names else type(estimator).__name__


def _rename_output(model: Any, new_name: str) -> None:
    """Rename the graph's single output (skl2onnx calls a regressor's output `variable`)."""
    graph = model.graph
    old = graph.output[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new_name
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new_name
    graph.output[0].name = new_name


def as_model_input(X: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The FP32 array the graph takes."""
    return np.ascontiguousarray(X, dtype=np.float32)
