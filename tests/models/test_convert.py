"""Conversion: pipelines, tensor names, determinism, and unsupported estimators."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading

from modelrail.errors import ConversionError
from modelrail.models.convert import convert, describe, task_of
from modelrail.models.dataset import Split
from modelrail.models.runtime import new_session


def test_pipeline_converts_with_stable_tensor_names(iris_split: Split) -> None:
    est = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        iris_split.X_train, iris_split.y_train)
    converted = convert(est, iris_split.n_features)
    assert converted.task == "classification"
    assert converted.estimator == "Pipeline(StandardScaler, LogisticRegression)"
    session = new_session(converted.onnx_bytes)
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert session.get_inputs()[0].type == "tensor(float)"
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    label, proba = session.run(None, {"input": iris_split.X_test[:5].astype(np.float32)})
    assert proba.shape == (5, 3)  # a plain tensor, not a ZipMap of dicts
    np.testing.assert_array_equal(label, est.predict(iris_split.X_test[:5]))


def test_regressor_output_is_named_predictions(diabetes_split: Split) -> None:
    est = RandomForestRegressor(n_estimators=5, random_state=0).fit(
        diabetes_split.X_train, diabetes_split.y_train)
    converted = convert(est, diabetes_split.n_features)
    assert converted.task == "regression"
    session = new_session(converted.onnx_bytes)
    assert [o.name for o in session.get_outputs()] == ["predictions"]


def test_conversion_is_deterministic(iris_split: Split) -> None:
    est = LogisticRegression(max_iter=500).fit(iris_split.X_train, iris_split.y_train)
    assert convert(est, 4).onnx_bytes == convert(est, 4).onnx_bytes


@pytest.mark.slow  # six interpreters importing scikit-learn and skl2onnx: ~15 s
def test_conversion_is_the_same_in_every_process(tmp_path: Path) -> None:
    """Across processes too: skl2onnx orders opset imports by string hash, which differs
    from process to process (PYTHONHASHSEED); a model's fingerprint must not."""
    script = tmp_path / "convert_once.py"
    script.write_text(
        "import hashlib, sys\n"
        "from sklearn.datasets import load_iris\n"
        "from sklearn.ensemble import GradientBoostingClassifier\n"
        "from modelrail.models.convert import convert\n"
        "X, y = load_iris(return_X_y=True)\n"
        "est = GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, y)\n"
        "print(hashlib.sha256(convert(est, 4).onnx_bytes).hexdigest())\n")
    digests = {
        subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip()
        for seed in (1, 2, 3, 4, 5, 6)}
    assert len(digests) == 1, digests


def test_unsupported_estimator_is_named_with_the_supported_list(iris_split: Split) -> None:
    est = make_pipeline(StandardScaler(), LabelSpreading()).fit(
        iris_split.X_train, iris_split.y_train)
    assert task_of(est) == "classification"
    with pytest.raises(ConversionError) as info:
        convert(est, iris_split.n_features)
    message = str(info.value)
    # names the whole model and, precisely, the step that has no converter
    assert (f"no converter for a step of {describe(est)}: LabelSpreading;") in message
    # and lists what is supported
    assert "accepted:" in message and "RandomForestClassifier" in message
