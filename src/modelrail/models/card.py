"""The model card: everything the registry records about one `name:version`.

Written once at registration (registry.py), read by the CLI (`model show`), by the serving
layer (tensor schemas, class labels, sha256 to check) and by rollouts (lineage in the audit
trail). Frozen pydantic models so a card cannot be changed after it is built.

The naming rules live here once: `check_name` / `check_version` / `parse_ref` apply them to
what a user types (registration and every lookup alike; reserved versions such as 'latest'
are refused by both), and the card's own validators apply the same rules to a card read
back from disk, whose `sha256` also names its blob's path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

from modelrail.errors import InvalidInputError

# Names end up in BentoML tags, Kubernetes labels and URLs: keep them to what all three take.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
VERSION_RE = re.compile(r"^[a-z0-9]([-._a-z0-9]{0,61}[a-z0-9])?$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# BentoML resolves `name:latest` to the newest saved version of `name`: a version really
# called "latest" could never be looked up by its tag, and it breaks the next save.
RESERVED_VERSIONS = frozenset({"latest"})
# OIP v2 / Triton route `/v2/models/stats` to the statistics extension: a model of that name
# could not be reached by its metadata route.
RESERVED_NAMES = frozenset({"stats"})
NAME_ACCEPTED = ("1-63 lowercase letters, digits and '-', starting and ending alphanumeric; "
                 "not " + ", ".join(repr(n) for n in sorted(RESERVED_NAMES)) + " (reserved)")
VERSION_ACCEPTED = ("1-63 lowercase letters, digits, '-', '_' and '.', starting and ending "
                    "alphanumeric; not " + ", ".join(repr(v) for v in sorted(RESERVED_VERSIONS))
                    + " (reserved: not an exact version)")
SHA256_ACCEPTED = "64 lowercase hexadecimal digits"

Task = Literal["classification", "regression"]
# Open Inference Protocol v2 datatypes we produce or accept.
Datatype = Literal["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "FP16", "FP32", "FP64",
                   "BYTES"]


def name_problem(name: str) -> str | None:
    """Why `name` is not a valid model name, or None if it is."""
    if name in RESERVED_NAMES:
        return f"model name {name!r} is reserved"
    return None if NAME_RE.fullmatch(name) else f"invalid model name {name!r}"


def version_problem(version: str) -> str | None:
    """Why `version` is not a valid model version, or None if it is."""
    if version in RESERVED_VERSIONS:
        return f"model version {version!r} is reserved"
    return None if VERSION_RE.fullmatch(version) else f"invalid model version {version!r}"


def sha256_problem(digest: str) -> str | None:
    """Why `digest` is not a sha256 as the registry writes it, or None if it is."""
    return None if SHA256_RE.fullmatch(digest) else f"invalid sha256 {digest[:80]!r}"


def check_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise an actionable error."""
    problem = name_problem(name)
    if problem:
        raise InvalidInputError(problem, where="name", accepted=NAME_ACCEPTED)
    return name


def check_version(version: str) -> str:
    """Return `version` if it is a valid, unreserved model version, else raise an
    actionable error. Registration and every lookup go through this one rule."""
    problem = version_problem(version)
    if problem:
        raise InvalidInputError(problem, where="version", accepted=VERSION_ACCEPTED)
    return version


def check_sha256(digest: str) -> str:
    """Return `digest` if it is 64 lowercase hex digits, else raise an actionable error."""
    problem = sha256_problem(digest)
    if problem:
        raise InvalidInputError(problem, where="sha256", accepted=SHA256_ACCEPTED)
    return digest


def parse_ref(ref: str) -> tuple[str, str]:
    """Split a `name:version` reference; a bare name or `:latest` is refused (pin a version)."""
    name, sep, version = ref.partition(":")
    if not sep or not version:
        raise InvalidInputError(
            f"model reference {ref!r} has no version", where="model reference",
            accepted="NAME:VERSION with an exact version, e.g. iris:2")
    if version in RESERVED_VERSIONS:
        raise InvalidInputError(
            f"model reference {ref!r} is not pinned", where="model reference",
            accepted=f"an exact version; ':{version}' is refused because it is not "
                     "reproducible")
    return check_name(name), check_version(version)


def _rule(problem: Callable[[str], str | None], accepted: str) -> AfterValidator:
    """The same rule as the check_* functions, as a pydantic validator (ValueError)."""
    def validate(value: str) -> str:
        found = problem(value)
        if found:
            raise ValueError(f"{found}; accepted: {accepted}")
        return value
    return AfterValidator(validate)


Name = Annotated[str, _rule(name_problem, NAME_ACCEPTED)]
Version = Annotated[str, _rule(version_problem, VERSION_ACCEPTED)]
Sha256 = Annotated[str, _rule(sha256_problem, SHA256_ACCEPTED)]


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

    name: Name
    version: Version
    sha256: Sha256  # also the blob's file name: validated before it is ever a path
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
