"""Train example models from a YAML spec (models/examples.yaml) — reproducible from a seed.

Called by `modelrail model train` and the demo. Datasets come from those bundled inside
scikit-learn (no download); estimators from the explicit ESTIMATORS map. For each
`name:version` it writes `<out>/<name>/<version>/model.joblib` and `data.npz` (the split
that registration fingerprints and checks parity on).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelrail.errors import InvalidInputError
from modelrail.models.card import check_name, check_version
from modelrail.models.dataset import Split, save_split

# Explicit map from a spec's estimator name to its scikit-learn class (module, class name).
ESTIMATORS: dict[str, tuple[str, str]] = {
    "logistic_regression": ("sklearn.linear_model", "LogisticRegression"),
    "ridge": ("sklearn.linear_model", "Ridge"),
    "linear_regression": ("sklearn.linear_model", "LinearRegression"),
    "decision_tree_classifier": ("sklearn.tree", "DecisionTreeClassifier"),
    "random_forest_classifier": ("sklearn.ensemble", "RandomForestClassifier"),
    "random_forest_regressor": ("sklearn.ensemble", "RandomForestRegressor"),
    "gradient_boosting_classifier": ("sklearn.ensemble", "GradientBoostingClassifier"),
    "gradient_boosting_regressor": ("sklearn.ensemble", "GradientBoostingRegressor"),
}
DATASETS = ("iris", "breast_cancer", "diabetes", "wine")
# Estimators that accept random_state get the spec's seed, so a rerun gives identical models.


class VersionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    estimator: str
    params: dict[str, Any] = Field(default_factory=dict)
    scale: bool = False
    # Train on labels shuffled with the seed: a model that is fast and error-free but wrong.
    # Used to build the "wrong predictions" bad candidate for rollout tests.
    shuffle_labels: bool = False

    @field_validator("estimator")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in ESTIMATORS:
            raise ValueError(f"unknown estimator {v!r}; known: {', '.join(ESTIMATORS)}")
        return v


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dataset: str
    versions: dict[str, VersionSpec]

    @field_validator("dataset")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; known: {', '.join(DATASETS)}")
        return v


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    seed: int
    test_size: float = Field(gt=0.0, lt=1.0)
    models: dict[str, ModelSpec]


@dataclass(frozen=True)
class Trained:
    name: str
    version: str
    model_path: Path
    data_path: Path


def load_spec(path: Path) -> TrainSpec:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"cannot read spec: {exc}", where=str(path),
                                accepted="a YAML file like models/examples.yaml") from exc
    try:
        spec = TrainSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidInputError(f"{err['msg']} (value {err.get('input')!r})",
                                where=f"{path}: {loc}",
                                accepted="see models/examples.yaml for the format") from exc
    for name, model in spec.models.items():
        check_name(name)
        for version in model.versions:
            check_version(version)
    return spec


def load_dataset(name: str) -> tuple[Any, Any, list[str], list[str] | None]:
    from sklearn import datasets

    loader = {"iris": datasets.load_iris, "breast_cancer": datasets.load_breast_cancer,
              "diabetes": datasets.load_diabetes, "wine": datasets.load_wine}[name]
    bunch = loader()
    target_names = [str(t) for t in bunch.target_names] if hasattr(bunch, "target_names") \
        else None
    return bunch.data, bunch.target, [str(f) for f in bunch.feature_names], target_names


def build_estimator(v: VersionSpec, seed: int) -> Any:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    module, cls = ESTIMATORS[v.estimator]
    factory = getattr(importlib.import_module(module), cls)
    params = dict(v.params)
    if "random_state" in factory().get_params():
        params.setdefault("random_state", seed)
    try:
        est = factory(**params)
    except TypeError as exc:
        raise InvalidInputError(f"bad params for {v.estimator}: {exc}", where="params",
                                accepted=f"keyword arguments of {factory.__name__}") from exc
    return make_pipeline(StandardScaler(), est) if v.scale else est


def train_all(spec: TrainSpec, out: Path, only: list[str] | None = None) -> list[Trained]:
    """Train every `name:version` in the spec (or those in `only`) and save them under out."""
    import joblib
    from sklearn.model_selection import train_test_split

    results: list[Trained] = []
    for name, model in spec.models.items():
        X, y, features, targets = load_dataset(model.dataset)
        X_tr, X_te, y_tr, y_te = train_test_split(
            X, y, test_size=spec.test_size, random_state=spec.seed)
        for version, v in model.versions.items():
            if only is not None and f"{name}:{version}" not in only:
                continue
            y_fit = y_tr
            if v.shuffle_labels:
                y_fit = np.random.default_rng(spec.seed).permutation(y_tr)
            est = build_estimator(v, spec.seed).fit(X_tr, y_fit)
            folder = out / name / version
            folder.mkdir(parents=True, exist_ok=True)
            joblib.dump(est, folder / "model.joblib")
            save_split(folder / "data.npz", Split(X_train=X_tr, y_train=y_fit, X_test=X_te,
                                                  y_test=y_te, feature_names=features,
                                                  target_names=targets))
            results.append(Trained(name=name, version=version,
                                   model_path=folder / "model.joblib",
                                   data_path=folder / "data.npz"))
    return results
