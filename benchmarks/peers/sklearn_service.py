"""Peer: the plain BentoML way — a @bentoml.service calling scikit-learn directly on the
fitted model (no ONNX, no OIP). Runs in its own virtual environment (benchmarks/serving.py)."""

from __future__ import annotations

import os

import bentoml
import joblib
import numpy as np


@bentoml.service(name="sklearn-plain", workers=int(os.environ.get("PEER_WORKERS", "1")))
class SklearnService:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["PEER_MODEL_PATH"])

    @bentoml.api
    def predict_proba(self, input: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(input))
