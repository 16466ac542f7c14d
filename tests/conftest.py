"""Test-wide setup: offline switches and a private BentoML home, set before any import of
bentoml or onnxruntime, so tests never touch the developer's ~/bentoml or the network."""

from __future__ import annotations

import os
import tempfile

os.environ["ORT_DISABLE_TELEMETRY"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="modelrail-test-bentoml-")
os.environ.pop("MODELRAIL_REGISTRY", None)
