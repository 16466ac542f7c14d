"""Registration: fitted model + data split → ONNX → parity gate → registry (+ BentoML store).

`register_model` is what `modelrail model register` and the demo call. Nothing is written
anywhere until conversion and the parity gate have passed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelrail.errors import InvalidInputError, ParityError
from modelrail.models import bento_store
from modelrail.models.card import (
    Datatype,
    ModelCard,
    Task,
    TensorSpec,
    TrainingData,
    check_name,
    check_version,
)
from modelrail.models.convert import (
    INPUT_NAME,
    as_model_input,
    convert,
    describe,
    load_estimator,
    task_of,
)
from modelrail.models.dataset import Split, fingerprint, load_split
from modelrail.models.parity import ParityResult, check_parity
from modelrail.models.registry import Registry
from modelrail.models.runtime import new_session

LIBRARIES = ("scikit-learn", "skl2onnx", "onnx", "onnxruntime", "numpy", "modelrail")


@dataclass(frozen=True)
class Registered:
    """What registration did: the card stored, whether it is new, and the parity details."""

    card: ModelCard
    created: bool
    parity: ParityResult


SAMPLE_ROWS = 256  # held-out rows kept with each version as its validation sample


def register_model(*, model_path: Path, data_path: Path, name: str, version: str,
                   registry: Registry, onnx_path: Path | None = None,
                   save_to_bentoml: bool = True) -> Registered:
    """Convert (or take `onnx_path`), prove parity, and register `name:version`."""
    check_name(name)
    check_version(version)
    estimator = load_estimator(model_path)
    split = load_split(data_path)
    return register_estimator(estimator=estimator, split=split, name=name, version=version,
                              registry=registry, source_sha256=_sha256_file(model_path),
                              onnx_bytes=_read_onnx(onnx_path) if onnx_path else None,
                              save_to_bentoml=save_to_bentoml)


def register_estimator(*, estimator: Any, split: Split, name: str, version: str,
                       registry: Registry, source_sha256: str, onnx_bytes: bytes | None = None,
                       save_to_bentoml: bool = True) -> Registered:
    """The in-memory form of `register_model` (used by the demo and tests)."""
    check_name(name)  # the rule every lookup applies: a version no lookup accepts (e.g.
    check_version(version)  # 'latest') must never be registered in the first place
    expected = getattr(estimator, "n_features_in_", split.n_features)
    if expected != split.n_features:
        raise InvalidInputError(
            f"{describe(estimator)} was fitted on {expected} features but the data split has "
            f"{split.n_features}", where="data", accepted="the split the model was trained on")
    task = task_of(estimator)
    if onnx_bytes is None:
        onnx_bytes = convert(estimator, split.n_features).onnx_bytes
    try:
        result = check_parity(estimator, onnx_bytes, task, split.X_test)
    except Exception as exc:  # onnxruntime raises its own untyped errors for a broken graph
        raise ParityError(
            f"the ONNX graph cannot be run on the held-out rows: {exc}", where="onnx",
            accepted=f"a graph taking FP32 '{INPUT_NAME}' [-1, {split.n_features}] and "
                     "answering 'label'+'probabilities' or 'predictions'") from exc
    if not result.parity.passed:
        raise ParityError(f"{name}:{version} not registered\n{result.report()}",
                          where="parity gate",
                          accepted="an ONNX graph whose labels match exactly and whose outputs "
                                   "match within the stated tolerance")
    card = _card(estimator=estimator, split=split, name=name, version=version, task=task,
                 onnx_bytes=onnx_bytes, result=result, source_sha256=source_sha256,
                 with_bentoml=save_to_bentoml)
    stored, created = registry.put(card, onnx_bytes)
    registry.put_sample(name, version, split.X_test[:SAMPLE_ROWS].astype(float).tolist())
    if save_to_bentoml:
        bento_store.save(stored, onnx_bytes)
    return Registered(card=stored, created=created, parity=result)


def _card(*, estimator: Any, split: Split, name: str, version: str, task: Task,
          onnx_bytes: bytes, result: ParityResult, source_sha256: str,
          with_bentoml: bool) -> ModelCard:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    n = split.n_features
    feature_names = (split.feature_names
                     or [str(f) for f in getattr(estimator, "feature_names_in_", [])]
                     or [f"x{i}" for i in range(n)])
    outputs: list[TensorSpec]
    class_labels: list[int] | list[str] | None = None
    if task == "classification":
        classes = list(np.asarray(estimator.classes_).tolist())
        if all(isinstance(c, int) for c in classes):
            class_labels = [int(c) for c in classes]
        else:
            class_labels = [str(c) for c in classes]
        label_type: Datatype = "INT64" if isinstance(class_labels[0], int) else "BYTES"
        outputs = [TensorSpec(name="label", datatype=label_type, shape=[-1]),
                   TensorSpec(name="probabilities", datatype="FP32",
                              shape=[-1, len(class_labels)])]
    else:
        outputs = [TensorSpec(name="predictions", datatype="FP32", shape=[-1, 1])]
    return ModelCard(
        name=name, version=version, sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        size_bytes=len(onnx_bytes), task=task,
        estimator=describe(estimator),
        inputs=[TensorSpec(name=INPUT_NAME, datatype="FP32", shape=[-1, n],
                           feature_names=feature_names)],
        outputs=outputs, class_labels=class_labels, target_names=split.target_names,
        target_deciles=None if task == "classification" else [
            float(q) for q in np.quantile(split.y_train.astype(np.float64),
                                          np.linspace(0.1, 0.9, 9))],
        metrics=evaluate(onnx_bytes, task, split.X_test, split.y_test, class_labels),
        training_data=TrainingData(
            sha256=fingerprint(split.X_train, split.y_train), rows=int(split.X_train.shape[0]),
            features=n, holdout_rows=int(split.X_test.shape[0]),
            holdout_sha256=fingerprint(split.X_test, split.y_test)),
        libraries={lib: _version(lib) for lib in LIBRARIES},
        opset={(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        parity=result.parity,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        git_commit=git_commit(), source_sha256=source_sha256,
        bentoml_tag=f"{name}:{version}" if with_bentoml else None,
    )


def evaluate(onnx_bytes: bytes, task: str, X: npt.NDArray[np.float64],
             y: npt.NDArray[np.generic], class_labels: list[int] | list[str] | None,
             ) -> dict[str, float]:
    """Held-out metrics of the ONNX graph itself: the artifact that is deployed."""
    from sklearn import metrics

    session = new_session(onnx_bytes)
    outs = dict(zip([o.name for o in session.get_outputs()],
                    session.run(None, {INPUT_NAME: as_model_input(X)}), strict=True))
    if task == "classification":
        labels, proba = np.asarray(outs["label"]), np.asarray(outs["probabilities"])
        result = {
            "accuracy": float(metrics.accuracy_score(y, labels)),
            "f1_macro": float(metrics.f1_score(y, labels, average="macro")),
            "log_loss": float(metrics.log_loss(y, np.clip(proba, 1e-15, 1),
                                               labels=class_labels)),
        }
        if proba.shape[1] == 2:
            result["roc_auc"] = float(metrics.roc_auc_score(y, proba[:, 1]))
        return result
    pred = np.asarray(outs["predictions"]).reshape(-1)
    return {
        "r2": float(metrics.r2_score(y, pred)),
        "mae": float(metrics.mean_absolute_error(y, pred)),
        "rmse": float(np.sqrt(metrics.mean_squared_error(y, pred))),
    }


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD of the working directory's git repository, '+dirty' if it has changes; None
    outside a repository or without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=5,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_onnx(path: Path) -> bytes:
    if not path.is_file():
        raise InvalidInputError("ONNX file not found", where=str(path),
                                accepted="a path to an .onnx file")
    return path.read_bytes()
