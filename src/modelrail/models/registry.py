"""The local, content-addressed model registry.

Layout under the registry root (flag `--registry`, env `MODELRAIL_REGISTRY`, default
`~/.modelrail/registry`):
  blobs/sha256/<hex>.onnx        the ONNX bytes, named by their hash
  models/<name>/<version>.json   the model card (card.py), pointing at its blob
Versions are immutable: a card is created once with an exclusive link; registering the
same bytes again is a no-op and different bytes are refused. Anything that loads a model
goes through `read_verified`, which re-hashes the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelrail.errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from modelrail.models import bento_store
from modelrail.models.card import ModelCard, check_name, check_version

ENV_VAR = "MODELRAIL_REGISTRY"


def default_root() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".modelrail" / "registry")


@dataclass(frozen=True)
class Verification:
    """Result of re-hashing a registered model's stored copies."""

    card: ModelCard
    registry_sha256: str
    bentoml_sha256: str | None

    @property
    def ok(self) -> bool:
        return self.registry_sha256 == self.card.sha256 and self.bentoml_sha256 in (
            None, self.card.sha256)


class Registry:
    """A registry rooted at one directory; cheap to construct, no state beyond the path."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_root()).expanduser()

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / f"{sha256}.onnx"

    def card_path(self, name: str, version: str) -> Path:
        return self.root / "models" / check_name(name) / f"{check_version(version)}.json"

    def put(self, card: ModelCard, onnx_bytes: bytes) -> tuple[ModelCard, bool]:
        """Store a new version; returns (the stored card, True if it was created now)."""
        actual = hashlib.sha256(onnx_bytes).hexdigest()
        if actual != card.sha256:
            raise IntegrityError(f"card says sha256 {card.sha256} but bytes hash to {actual}",
                                 where=card.ref)
        path = self.card_path(card.name, card.version)
        if path.exists():
            return self._existing(card), False
        blob = self.blob_path(card.sha256)
        if not blob.exists():
            _atomic_write(blob, onnx_bytes)
        tmp = _write_temp(path.parent, card.model_dump_json(indent=2).encode())
        try:
            os.link(tmp, path)  # exclusive: fails if another process registered it first
        except FileExistsError:
            return self._existing(card), False
        finally:
            tmp.unlink()
        return card, True

    def _existing(self, card: ModelCard) -> ModelCard:
        stored = self.get(card.name, card.version)
        if stored.sha256 != card.sha256:
            raise ConflictError(
                f"{card.ref} is already registered with sha256 {stored.sha256}; the new "
                f"model hashes to {card.sha256}", where=str(self.card_path(card.name,
                                                                            card.version)),
                accepted="versions are immutable: register the new model under a new version")
        return stored

    def get(self, name: str, version: str) -> ModelCard:
        path = self.card_path(name, version)
        if not path.exists():
            known = [c.version for c in self.list() if c.name == name]
            raise NotFoundError(
                f"{name}:{version} is not registered", where=str(self.root),
                accepted=f"versions of {name}: {', '.join(known)}" if known else
                f"registered models: {', '.join(sorted({c.ref for c in self.list()})) or 'none'}")
        try:
            return ModelCard.model_validate_json(path.read_text())
        except ValueError as exc:
            raise IntegrityError(f"model card is unreadable: {exc}", where=str(path)) from exc

    def sample_path(self, name: str, version: str) -> Path:
        return self.root / "samples" / check_name(name) / f"{check_version(version)}.json"

    def put_sample(self, name: str, version: str, rows: list[list[float]]) -> None:
        """Keep a validation sample (held-out rows) with a version: rollouts replay it to
        both tracks for the model gate and send it as load. Written once, like the card."""
        path = self.sample_path(name, version)
        if not path.exists():
            _atomic_write(path, json.dumps({"rows": rows}).encode())

    def sample(self, name: str, version: str) -> list[list[float]]:
        """The validation sample registered with `name:version`."""
        path = self.sample_path(name, version)
        if not path.exists():
            self.get(name, version)  # not registered at all: that error first
            raise NotFoundError(f"{name}:{version} has no validation sample", where=str(path),
                                accepted="a version registered by this modelrail (register "
                                         "it again under a new version), or --sample FILE")
        rows = json.loads(path.read_text())["rows"]
        return [[float(v) for v in r] for r in rows]

    def list(self) -> list[ModelCard]:
        base = self.root / "models"
        if not base.is_dir():
            return []
        cards = [ModelCard.model_validate_json(p.read_text())
                 for p in sorted(base.glob("*/*.json"))]
        return sorted(cards, key=lambda c: (c.name, _version_key(c.version)))

    def read_verified(self, name: str, version: str) -> tuple[ModelCard, bytes]:
        """The card and ONNX bytes, refused if the bytes no longer hash to the card's sha256."""
        card = self.get(name, version)
        blob = self.blob_path(card.sha256)
        if not blob.exists():
            raise IntegrityError(f"the ONNX file of {card.ref} is missing", where=str(blob))
        data = blob.read_bytes()
        bento_store.check_bytes(card, data, where=str(blob))
        return card, data

    def verify(self, name: str, version: str, *, bentoml_copy: bool = True) -> Verification:
        """Re-hash the registry copy and (if recorded) the BentoML copy."""
        card = self.get(name, version)
        blob = self.blob_path(card.sha256)
        reg = hashlib.sha256(blob.read_bytes()).hexdigest() if blob.exists() else "missing"
        bento: str | None = None
        if bentoml_copy and card.bentoml_tag:
            bento = bento_store.stored_sha256(card.bentoml_tag) or "missing"
        return Verification(card=card, registry_sha256=reg, bentoml_sha256=bento)


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def _write_temp(directory: Path, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(name)


def _atomic_write(path: Path, data: bytes) -> None:
    os.replace(_write_temp(path.parent, data), path)


def parse_registry_flag(value: str | None) -> Registry:
    """Registry from a `--registry` flag value, else the environment, else the default."""
    if value is not None and not value.strip():
        raise InvalidInputError("empty --registry path", where="--registry",
                                accepted="a directory path")
    return Registry(Path(value) if value else None)
