"""Example training: the spec is validated and a rerun reproduces the same models."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from modelrail.errors import InvalidInputError
from modelrail.models.convert import convert, load_estimator
from modelrail.models.dataset import load_split
from modelrail.models.train import load_spec, train_all

EXAMPLES = Path(__file__).resolve().parents[2] / "models" / "examples.yaml"


def test_examples_spec_has_three_datasets_with_two_versions_each() -> None:
    spec = load_spec(EXAMPLES)
    datasets = {m.dataset for m in spec.models.values()}
    assert {"iris", "breast_cancer", "diabetes"} <= datasets
    assert all(len(m.versions) >= 2 for m in spec.models.values())
    # versions differ in estimator, hyper-parameters or labels (iris 3: shuffled, the
    # deliberately wrong candidate of the rollback demo)
    for m in spec.models.values():
        assert len({(v.estimator, tuple(sorted(v.params.items())), v.shuffle_labels)
                    for v in m.versions.values()}) == len(m.versions)
    assert spec.models["iris"].versions["3"].shuffle_labels


def test_training_is_reproducible(tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES)
    only = ["iris:2", "diabetes:2"]
    first = train_all(spec, tmp_path / "a", only)
    second = train_all(spec, tmp_path / "b", only)
    assert [t.name for t in first] == ["iris", "diabetes"]
    for a, b in zip(first, second, strict=True):
        split = load_split(a.data_path)
        onnx_a = convert(load_estimator(a.model_path), split.n_features).onnx_bytes
        onnx_b = convert(load_estimator(b.model_path), split.n_features).onnx_bytes
        assert hashlib.sha256(onnx_a).digest() == hashlib.sha256(onnx_b).digest()
        assert a.data_path.read_bytes() == b.data_path.read_bytes()


@pytest.mark.parametrize("text,needle", [
    ("seed: 1\ntest_size: 0.2\nmodels: {x: {dataset: mnist, versions: {}}}", "unknown dataset"),
    ("seed: 1\ntest_size: 0.2\nmodels: {x: {dataset: iris, versions: {'1': {estimator: svm}}}}",
     "unknown estimator 'svm'; known: logistic_regression"),
    ("seed: 1\ntest_size: 1.5\nmodels: {}", "test_size"),
    ("seed: 1\ntest_size: 0.2\nmodels: {Bad_Name: {dataset: iris, versions: {}}}",
     "invalid model name 'Bad_Name'"),
    ("seed: [1\n", "cannot read spec"),
])
def test_bad_specs(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as info:
        load_spec(path)
    assert needle in str(info.value)
