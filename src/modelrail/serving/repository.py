"""The models a serving process holds: loaded from BentoML's model store, sha256-checked,
warmed up, and looked up by name and optional version.

One `ModelRepository` per worker process. `ready` is true only when every configured model
loaded and passed its warm-up inference; nothing is served from a model that did not.
Without a version, a name resolves to its only loaded version, or to the highest one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modelrail.errors import IntegrityError
from modelrail.models import bento_store
from modelrail.models.card import ModelCard
from modelrail.models.convert import INPUT_NAME
from modelrail.models.runtime import new_session
from modelrail.serving.batching import Batcher
from modelrail.serving.config import ModelRef
from modelrail.serving.errors import InferenceError, Kind
from modelrail.serving.faults import Fault, FaultInjector, parse_faults

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """One model version ready to run (or, if `ready` is false, known but not servable)."""

    card: ModelCard
    session: Any
    output_names: list[str]
    fault: Fault | None = None
    ready: bool = False
    # decile edges of the training targets (regression) for the prediction metric
    value_bins: list[float] = field(default_factory=list)
    batcher: Batcher | None = None  # with MODELRAIL_BATCHING=adaptive, made on first use

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    def run(self, x: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
        values = self.session.run(None, {INPUT_NAME: x})
        return dict(zip(self.output_names, values, strict=True))

    def warm_up(self) -> None:
        if self.fault is not None and self.fault.never_ready:
            raise RuntimeError("warm-up failed: fault injection never_ready")
        n = self.card.inputs[0].shape[-1]
        out = self.run(np.zeros((1, n), dtype=np.float32))
        expected = {o.name for o in self.card.outputs}
        if set(out) != expected:
            raise RuntimeError(f"warm-up answered {sorted(out)}, card says {sorted(expected)}")
        for name, value in out.items():
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise RuntimeError(f"warm-up output {name} is not finite")
        self.ready = True


class ModelRepository:
    def __init__(self, faults: FaultInjector | None = None, *, batching: bool = False) -> None:
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self.batching = batching  # join concurrent requests' rows (serving.batching)
        self.errors: dict[str, str] = {}
        self.faults = faults or parse_faults(None)
        self.loaded_at: float | None = None

    @property
    def ready(self) -> bool:
        return bool(self.models) and not self.errors and all(
            m.ready for m in self.models.values())

    def load_all(self, refs: tuple[ModelRef, ...]) -> None:
        """Load and warm up every model; failures are recorded (readiness stays false)."""
        for ref in refs:
            try:
                card, data = bento_store.load(ref.tag)
                if ref.sha256 and ref.sha256 != card.sha256:
                    raise IntegrityError(
                        f"{ref.tag} is pinned to sha256 {ref.sha256} but the stored model has "
                        f"{card.sha256}", where="MODELRAIL_MODELS",
                        accepted="the sha256 the registry recorded for this version")
                self.add(card, data)
            except Exception as exc:
                self.errors[ref.tag] = str(exc)
                log.error("model %s not loaded: %s", ref, exc)
        self.loaded_at = time.time()

    def add(self, card: ModelCard, onnx_bytes: bytes) -> LoadedModel:
        """Load verified bytes, warm up; a warm-up failure leaves the model not ready."""
        bento_store.check_bytes(card, onnx_bytes, where=f"model {card.ref}")
        session = new_session(onnx_bytes)
        model = LoadedModel(card=card, session=session,
                            output_names=[o.name for o in session.get_outputs()],
                            fault=self.faults.for_model(card.ref),
                            value_bins=list(card.target_deciles or []))
        self.models[(card.name, card.version)] = model
        try:
            model.warm_up()
        except Exception as exc:
            self.errors[card.ref] = str(exc)
            log.error("model %s failed its warm-up: %s", card.ref, exc)
        return model

    def versions(self, name: str) -> list[str]:
        return sorted((v for (n, v) in self.models if n == name), key=_version_key)

    def resolve(self, name: str, version: str | None) -> LoadedModel:
        """The model to answer with; NOT_FOUND lists what is served."""
        if version:  # the usual request names its version: one dict lookup
            found = self.models.get((name, version))
            if found is not None:
                return found
        versions = self.versions(name)
        if not versions:
            served = ", ".join(sorted({n for n, _ in self.models})) or "none"
            raise InferenceError(Kind.NOT_FOUND,
                                 f"unknown model {name!r}; served models: {served}")
        if version:
            if version not in versions:
                raise InferenceError(
                    Kind.NOT_FOUND, f"model {name!r} has no version {version!r}; served "
                                    f"versions: {', '.join(versions)}")
        else:
            version = versions[-1]
        return self.models[(name, version)]

    def ready_model(self, name: str, version: str | None) -> LoadedModel:
        model = self.resolve(name, version)
        if not model.ready:
            raise InferenceError(Kind.UNAVAILABLE,
                                 f"model {model.card.ref} is not ready: "
                                 f"{self.errors.get(model.card.ref, 'loading')}")
        return model


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)
