"""The parity gate: it passes faithful graphs and bites on tampered or broken ones."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelrail.models.convert import convert
from modelrail.models.dataset import Split
from modelrail.models.parity import TOL_ABS, check_parity
from tests.models.helpers import make_split, tamper_first_float_initializer


@pytest.mark.parametrize("factory,dataset", [
    (lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), "iris"),
    (lambda: RandomForestClassifier(n_estimators=20, random_state=0), "iris"),
    (lambda: GradientBoostingClassifier(n_estimators=20, random_state=0), "breast_cancer"),
    (lambda: make_pipeline(StandardScaler(), Ridge()), "diabetes"),
])
def test_faithful_conversion_passes(factory, dataset) -> None:  # type: ignore[no-untyped-def]
    split = make_split(dataset)
    est = factory().fit(split.X_train, split.y_train)
    result = check_parity(est, convert(est, split.n_features).onnx_bytes,
                          "regression" if dataset == "diabetes" else "classification",
                          split.X_test)
    assert result.parity.passed, result.report()
    assert result.parity.label_mismatches == 0
    assert result.parity.rows == split.X_test.shape[0]
    if dataset != "diabetes":
        assert result.parity.max_abs_diff <= TOL_ABS


def test_tampered_classifier_graph_is_refused_with_a_report(iris_split: Split) -> None:
    est = LogisticRegression(max_iter=1000).fit(iris_split.X_train, iris_split.y_train)
    tampered = tamper_first_float_initializer(convert(est, 4).onnx_bytes)
    result = check_parity(est, tampered, "classification", iris_split.X_test)
    assert not result.parity.passed
    assert result.parity.max_abs_diff > TOL_ABS
    report = result.report()
    assert "FAILED" in report and f"at row {result.worst_row}" in report
    # the report shows the offending input row
    assert result.worst_input == [float(v) for v in iris_split.X_test[result.worst_row]]


def test_tampered_regressor_graph_is_refused(diabetes_split: Split) -> None:
    est = Ridge().fit(diabetes_split.X_train, diabetes_split.y_train)
    tampered = tamper_first_float_initializer(convert(est, 10).onnx_bytes, factor=1.0001)
    result = check_parity(est, tampered, "regression", diabetes_split.X_test)
    assert not result.parity.passed


def test_label_disagreement_fails_even_when_probabilities_are_close(iris_split: Split) -> None:
    # A graph from a model trained on other labels: labels disagree.
    est = LogisticRegression(max_iter=1000).fit(iris_split.X_train, iris_split.y_train)
    other = LogisticRegression(max_iter=1000).fit(
        iris_split.X_train, np.random.default_rng(0).permutation(iris_split.y_train))
    result = check_parity(est, convert(other, 4).onnx_bytes, "classification",
                          iris_split.X_test)
    assert not result.parity.passed
    assert result.parity.label_mismatches > 0
    assert result.first_label_mismatch is not None
    assert "label mismatches" in result.report()


def test_wrong_output_shape_fails(iris_split: Split, diabetes_split: Split) -> None:
    # A "broken conversion": a graph for a different problem (3 classes vs 1 output).
    reg = Ridge().fit(iris_split.X_train, iris_split.y_train)
    clf = LogisticRegression(max_iter=1000).fit(iris_split.X_train, iris_split.y_train)
    result = check_parity(reg, convert(clf, 4).onnx_bytes, "regression", iris_split.X_test)
    assert not result.parity.passed
