"""Peer: the plain BentoML way — a @bentoml.service calling scikit-learn directly on the
fitted models (no ONNX, no OIP). Runs in its own virtual environment (benchmarks/serving.py).

PEER_MODELS: comma-separated NAME=PATH of joblib files; a request names its model:
`{"input": [[...], ...], "model": "NAME"}` to /predict_proba (classifiers) or /predict
(regressors). PEER_WORKERS: worker processes (default 1)."""

from __future__ import annotations

import os

import bentoml
import joblib
import numpy as np


@bentoml.service(name="sklearn-plain", workers=int(os.environ.get("PEER_WORKERS", "1")))
class SklearnService:
    def __init__(self) -> None:
        self.models = {name: joblib.load(path) for name, path in
                       (spec.split("=", 1) for spec in os.environ["PEER_MODELS"].split(","))}

    @bentoml.api
    def predict_proba(self, input: np.ndarray, model: str) -> np.ndarray:
        return np.asarray(self.models[model].predict_proba(input))

    @bentoml.api
    def predict(self, input: np.ndarray, model: str) -> np.ndarray:
        return np.asarray(self.models[model].predict(input))
