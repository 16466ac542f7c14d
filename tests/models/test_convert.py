"""Conversion: pipelines, tensor names, determinism, and unsupported estimators."""

from __future__ import annotations

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
