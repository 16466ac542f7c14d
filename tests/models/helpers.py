"""Helpers shared by the model pipeline tests: data splits, saved models, tampering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split

from modelrail.models.dataset import Split, save_split


def make_split(name: str = "iris", seed: int = 7) -> Split:
    loader = {"iris": datasets.load_iris, "diabetes": datasets.load_diabetes,
              "breast_cancer": datasets.load_breast_cancer}[name]
    bunch = loader()
    X_tr, X_te, y_tr, y_te = train_test_split(bunch.data, bunch.target, test_size=0.25,
                                              random_state=seed)
    return Split(X_train=X_tr, y_train=y_tr, X_test=X_te, y_test=y_te,
                 feature_names=[str(f) for f in bunch.feature_names],
                 target_names=[str(t) for t in getattr(bunch, "target_names", [])] or None)


def write_model(folder: Path, estimator: Any, split: Split) -> tuple[Path, Path]:
    """Save an estimator and its split the way `modelrail model train` does."""
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(estimator, folder / "model.joblib")
    save_split(folder / "data.npz", split)
    return folder / "model.joblib", folder / "data.npz"


def tamper_first_float_initializer(onnx_bytes: bytes, factor: float = 1.05) -> bytes:
    """Scale the graph's largest float parameter (an initializer, or a FLOATS attribute such
    as a linear model's coefficients or a tree ensemble's leaf weights): the graph still
    loads and runs, but answers differently."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    inits = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    attrs = [a for n in model.graph.node for a in n.attribute
             if a.type == onnx.AttributeProto.FLOATS and len(a.floats) > 0]
    best_init = max(inits, key=lambda i: int(np.prod(i.dims)), default=None)
    best_attr = max(attrs, key=lambda a: len(a.floats), default=None)
    init_size = int(np.prod(best_init.dims)) if best_init is not None else -1
    if best_attr is not None and len(best_attr.floats) >= init_size:
        values = [v * factor + 0.01 for v in best_attr.floats]
        del best_attr.floats[:]
        best_attr.floats.extend(values)
    else:
        assert best_init is not None, "graph has no float parameters to tamper with"
        arr = numpy_helper.to_array(best_init).copy() * factor + 0.01
        best_init.CopyFrom(numpy_helper.from_array(arr.astype(np.float32), best_init.name))
    return model.SerializeToString()
