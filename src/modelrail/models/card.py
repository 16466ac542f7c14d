"""The model card: everything the registry records about one `name:version`.

Written once at registration (registry.py), read by the CLI (`model show`), by the serving
layer (tensor schemas, class labels, sha256 to check) and by rollouts (lineage in the audit
trail). Frozen pydantic models so a card cannot be changed after it is built.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from modelrail.errors import InvalidInputError

# Names end up in BentoML tags, Kubernetes labels and URLs: keep them to what all three take.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
VERSION_RE = re.compile(r"^[a-z0-9]([-._a-z0-9]{0,61}[a-z0-9])?$")

Task = Literal["classification", "regression"]
# Open Inference Protocol v2 datatypes we produce or accept.
Datatype = Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "FP16", "FP32", "FP64",
                   "BYTES"]


def check_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise an actionable error."""
    if not NAME_RE.fullmatch(name):
        raise InvalidInputError(
            f"invalid model name {name!r}", where="name",
            accepted="1-63 lowercase letters, digits and '-', starting and ending alphanumeric")
    return name


def check_version(version: str) -> str:
    """Return `version` if it is a valid model version, else raise an actionable error."""
    if not VERSION_RE.fullmatch(version):
        raise InvalidInputError(
            f"invalid model version {version!r}", where="version",
            accepted="1-63 lowercase letters, digits, '-', '_' and '.', "
                     "starting and ending alphanumeric")
    return version


def parse_ref(ref: str) -> tuple[str, str]:
    """Split a `name:version` reference; a bare name or `:latest` is refused (pin a version)."""
    name, sep, version = ref.partition(":")
    if not sep or not version:
        raise InvalidInputError(
            f"model reference {ref!r} has no version", where="model reference",
            accepted="NAME:VERSION with an exact version, e.g. iris:2")
    if version == "latest":
        raise InvalidInputError(
            f"model reference {ref!r} is not pinned", where="model reference",
            accepted="an exact version; ':latest' is refused because it is not reproducible")
    return check_name(name), check_version(version)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One named input or output tensor; -1 in `shape` means any size (the batch axis)."""

    name: str
    datatype: Datatype
    shape: list[int]
    feature_names: list[str] | None = None


class Parity(_Frozen):
    """How closely the ONNX graph answered like scikit-learn on the held-out rows."""

    rows: int
    label_mismatches: int
    max_abs_diff: float
    max_rel_diff: float
    tolerance_abs: float
    tolerance_rel: float
    passed: bool


class TrainingData(_Frozen):
    """Fingerprint of the data the model was fitted on (sha256 over canonical arrays)."""

    sha256: str
    rows: int
    features: int
    holdout_rows: int
    holdout_sha256: str


class ModelCard(_Frozen):
    """Registry metadata for one immutable model version."""

    name: str
    version: str
    sha256: str
    size_bytes: int
    task: Task
    estimator: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    class_labels: list[int] | list[str] | None = None
    target_names: list[str] | None = None
    # regression only: the 9 inner decile edges of the training targets; the server counts
    # predictions in these 10 bins so rollouts can compare prediction distributions
    target_deciles: list[float] | None = None
    metrics: dict[str, float]
    training_data: TrainingData
    libraries: dict[str, str]
    opset: dict[str, int]
    parity: Parity
    created_at: str
    git_commit: str | None
    source_sha256: str
    bentoml_tag: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"
