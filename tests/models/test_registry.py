"""The registry: content addressing, immutable versions, integrity checks, BentoML copy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import bentoml
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modelrail.errors import ConflictError, IntegrityError, NotFoundError, ParityError
from modelrail.models import bento_store
from modelrail.models.convert import convert
from modelrail.models.dataset import Split, fingerprint
from modelrail.models.register import register_estimator, register_model
from modelrail.models.registry import Registry
from tests.models.helpers import tamper_first_float_initializer, write_model


def _lr(split: Split, C: float = 1.0) -> LogisticRegression:
    return LogisticRegression(C=C, max_iter=1000).fit(split.X_train, split.y_train)


def test_register_records_the_full_card(tmp_path: Path, registry: Registry,
                                        iris_split: Split) -> None:
    est = make_pipeline(StandardScaler(), _lr(iris_split))
    est.fit(iris_split.X_train, iris_split.y_train)
    model_file, data_file = write_model(tmp_path / "m", est, iris_split)
    result = register_model(model_path=model_file, data_path=data_file, name="iris",
                            version="1", registry=registry, save_to_bentoml=False)
    card = result.card
    assert result.created
    blob = registry.blob_path(card.sha256)
    assert blob.read_bytes() and hashlib.sha256(blob.read_bytes()).hexdigest() == card.sha256
    assert blob.name == f"{card.sha256}.onnx"  # content-addressed
    assert card.task == "classification" and card.class_labels == [0, 1, 2]
    assert card.target_names == ["setosa", "versicolor", "virginica"]
    assert card.inputs[0].feature_names == iris_split.feature_names
    assert card.inputs[0].shape == [-1, 4] and card.inputs[0].datatype == "FP32"
    assert [o.name for o in card.outputs] == ["label", "probabilities"]
    assert card.outputs[1].shape == [-1, 3]
    assert {"accuracy", "f1_macro", "log_loss"} <= card.metrics.keys()
    assert card.metrics["accuracy"] > 0.8
    assert card.training_data.sha256 == fingerprint(iris_split.X_train, iris_split.y_train)
    assert card.training_data.rows == len(iris_split.X_train)
    assert set(card.libraries) >= {"scikit-learn", "skl2onnx", "onnx", "onnxruntime"}
    assert card.opset["ai.onnx"] == 18
    assert card.parity.passed and card.parity.rows == len(iris_split.X_test)
    assert card.source_sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert card.created_at.endswith("+00:00")
    assert registry.get("iris", "1") == card
    assert [c.ref for c in registry.list()] == ["iris:1"]


def test_same_bytes_again_is_a_no_op(registry: Registry, iris_split: Split) -> None:
    est = _lr(iris_split)
    first = register_estimator(estimator=est, split=iris_split, name="iris", version="1",
                               registry=registry, source_sha256="x", save_to_bentoml=False)
    again = register_estimator(estimator=est, split=iris_split, name="iris", version="1",
                               registry=registry, source_sha256="x", save_to_bentoml=False)
    assert first.created and not again.created
    assert again.card == first.card  # the stored card, created_at included, is unchanged


def test_a_version_is_immutable(registry: Registry, iris_split: Split) -> None:
    register_estimator(estimator=_lr(iris_split, C=1.0), split=iris_split, name="iris",
                       version="1", registry=registry, source_sha256="a",
                       save_to_bentoml=False)
    before = registry.card_path("iris", "1").read_bytes()
    with pytest.raises(ConflictError) as info:
        register_estimator(estimator=_lr(iris_split, C=0.01), split=iris_split, name="iris",
                           version="1", registry=registry, source_sha256="b",
                           save_to_bentoml=False)
    assert "iris:1 is already registered" in str(info.value)
    assert "new version" in str(info.value)
    assert registry.card_path("iris", "1").read_bytes() == before


def test_parity_failure_registers_nothing(registry: Registry, iris_split: Split) -> None:
    est = _lr(iris_split)
    tampered = tamper_first_float_initializer(convert(est, 4).onnx_bytes)
    with pytest.raises(ParityError) as info:
        register_estimator(estimator=est, split=iris_split, name="iris", version="1",
                           registry=registry, source_sha256="x", onnx_bytes=tampered,
                           save_to_bentoml=False)
    assert "iris:1 not registered" in str(info.value) and "max |diff|" in str(info.value)
    assert registry.list() == []
    assert not (registry.root / "blobs").exists()


def test_garbage_onnx_is_refused(registry: Registry, iris_split: Split) -> None:
    with pytest.raises(ParityError) as info:
        register_estimator(estimator=_lr(iris_split), split=iris_split, name="iris",
                           version="1", registry=registry, source_sha256="x",
                           onnx_bytes=b"not an onnx graph", save_to_bentoml=False)
    assert "cannot be run" in str(info.value)
    assert registry.list() == []


def test_tampered_registry_file_is_refused_naming_both_hashes(
        registry: Registry, iris_split: Split) -> None:
    card = register_estimator(estimator=_lr(iris_split), split=iris_split, name="iris",
                              version="1", registry=registry, source_sha256="x",
                              save_to_bentoml=False).card
    blob = registry.blob_path(card.sha256)
    tampered = tamper_first_float_initializer(blob.read_bytes())
    blob.write_bytes(tampered)
    with pytest.raises(IntegrityError) as info:
        registry.read_verified("iris", "1")
    message = str(info.value)
    assert card.sha256 in message and hashlib.sha256(tampered).hexdigest() in message
    assert not registry.verify("iris", "1").ok


def test_unknown_version_lists_known_ones(registry: Registry, iris_split: Split) -> None:
    register_estimator(estimator=_lr(iris_split), split=iris_split, name="iris", version="1",
                       registry=registry, source_sha256="x", save_to_bentoml=False)
    with pytest.raises(NotFoundError, match=r"iris:7 is not registered.*versions of iris: 1"):
        registry.get("iris", "7")


def test_bentoml_store_gets_the_pinned_version(registry: Registry, iris_split: Split) -> None:
    est = RandomForestClassifier(n_estimators=5, random_state=0).fit(
        iris_split.X_train, iris_split.y_train)
    card = register_estimator(estimator=est, split=iris_split, name="bento-rf", version="3",
                              registry=registry, source_sha256="x").card
    assert card.bentoml_tag == "bento-rf:3"
    model = bentoml.models.get("bento-rf:3")
    assert str(model.tag) == "bento-rf:3"  # pinned, not a generated version
    assert model.info.metadata["sha256"] == card.sha256
    loaded_card, data = bento_store.load("bento-rf:3")
    assert loaded_card == card and hashlib.sha256(data).hexdigest() == card.sha256
    assert registry.verify("bento-rf", "3").ok
    # tamper with BentoML's copy: loading refuses it and verify notices
    onnx_path = Path(model.path_of(bento_store.ONNX_FILE))
    onnx_path.write_bytes(tamper_first_float_initializer(onnx_path.read_bytes()))
    with pytest.raises(IntegrityError, match=card.sha256):
        bento_store.load("bento-rf:3")
    assert not registry.verify("bento-rf", "3").ok


def test_card_json_round_trips(registry: Registry, iris_split: Split) -> None:
    card = register_estimator(estimator=_lr(iris_split), split=iris_split, name="iris",
                              version="1", registry=registry, source_sha256="x",
                              save_to_bentoml=False).card
    raw = json.loads(registry.card_path("iris", "1").read_text())
    assert raw["sha256"] == card.sha256 and raw["parity"]["passed"] is True
