"""modelrail: ship scikit-learn models to production on Kubernetes.

Subpackages, by what they do:
  models   convert scikit-learn to ONNX, prove parity, keep the fingerprinted registry
  serving  the Open Inference Protocol v2 server logic the BentoML service runs
  infra    Kubernetes manifest builders and Pulumi components
  rollout  the canary engine, its traffic routers, metric providers and platforms
The `modelrail` console command (cli.py) is the entry point for people and CI.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Offline by default: onnxruntime reports telemetry on Linux and BentoML tracks usage unless
# told otherwise. Set before either library is imported anywhere in the process; a user who
# explicitly sets these keeps their value.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
