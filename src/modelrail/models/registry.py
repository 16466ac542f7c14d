"""The local, content-addressed model registry.

Layout under the registry root (flag `--registry`, env `MODELRAIL_REGISTRY`, default
`~/.modelrail/registry`):
  blobs/sha256/<hex>.onnx        the ONNX bytes, named by their hash
  models/<name>/<version>.json   the model card (card.py), pointing at its blob
Versions are immutable: a card is created once with an exclusive link; registering the
same bytes again is a no-op and different bytes are refused. Anything that loads a model
goes through `read_verified`, which re-hashes the bytes.

Every file is written durably (durable.py) and only through real folders inside the root: a
symlink anywhere below the root is refused before anything is written. Cards and samples
read back are validated like user input; a torn or malformed one is a CorruptStateError
naming the file and how to repair it.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from modelrail.durable import atomic_write_bytes, create_exclusive_bytes
from modelrail.errors import (
    ConflictError,
    CorruptStateError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    describe_invalid,
)
from modelrail.models import bento_store
from modelrail.models.card import ModelCard, check_name, check_sha256, check_version

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
        return self.root / "blobs" / "sha256" / f"{check_sha256(sha256)}.onnx"

    def card_path(self, name: str, version: str) -> Path:
        return self.root / "models" / check_name(name) / f"{check_version(version)}.json"

    def put(self, card: ModelCard, onnx_bytes: bytes) -> tuple[ModelCard, bool]:
        """Store a new version; returns (the stored card, True if it was created now)."""
        actual = hashlib.sha256(onnx_bytes).hexdigest()
        if actual != card.sha256:
            raise IntegrityError(f"card says sha256 {card.sha256} but bytes hash to {actual}",
                                 where=card.ref)
        path = self._writable(self.card_path(card.name, card.version))
        if path.exists():
            return self._existing(card), False
        blob = self._writable(self.blob_path(card.sha256))
        if not blob.exists():
            atomic_write_bytes(blob, onnx_bytes)
        # exclusive: False if another process registered this version first
        if not create_exclusive_bytes(path, card.model_dump_json(indent=2).encode()):
            return self._existing(card), False
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
        return self._read_card(path, name, version)

    def _read_card(self, path: Path, name: str, version: str) -> ModelCard:
        """The card at `path`, validated like user input and against where it lies."""
        repair = ("restore the file from a backup, or remove it and register the model "
                  f"again as {name}:{version}")
        try:
            card = ModelCard.model_validate_json(path.read_bytes())
        except ValueError as exc:  # torn JSON, a missing field, a bad name or sha256
            raise CorruptStateError(f"model card is unreadable: {describe_invalid(exc)}",
                                    where=str(path), repair=repair) from None
        if (card.name, card.version) != (name, version):
            raise CorruptStateError(
                f"model card says it is {card.ref}, but it is stored as {name}:{version}",
                where=str(path), repair=repair)
        return card

    def sample_path(self, name: str, version: str) -> Path:
        return self.root / "samples" / check_name(name) / f"{check_version(version)}.json"

    def put_sample(self, name: str, version: str, rows: list[list[float]]) -> None:
        """Keep a validation sample (held-out rows) with a version: rollouts replay it to
        both tracks for the model gate and send it as load. Written once, like the card."""
        path = self._writable(self.sample_path(name, version))
        if not path.exists():
            atomic_write_bytes(path, json.dumps({"rows": rows}).encode())

    def sample(self, name: str, version: str) -> list[list[float]]:
        """The validation sample registered with `name:version`."""
        path = self.sample_path(name, version)
        if not path.exists():
            self.get(name, version)  # not registered at all: that error first
            raise NotFoundError(f"{name}:{version} has no validation sample", where=str(path),
                                accepted="a version registered by this modelrail (register "
                                         "it again under a new version), or --sample FILE")
        return _read_sample(path)

    def list(self) -> list[ModelCard]:
        """Every readable card, by name and version (`scan` also reports unreadable ones)."""
        return self.scan()[0]

    def scan(self) -> tuple[builtins.list[ModelCard], builtins.list[CorruptStateError]]:
        """Every card: the readable ones sorted by name and version, and one error per card
        file that is torn, malformed or misplaced (so one bad file hides no other)."""
        base = self.root / "models"
        if not base.is_dir():
            return [], []
        cards, bad = [], []
        for p in sorted(base.glob("*/*.json")):
            try:
                cards.append(self._read_card(p, p.parent.name, p.stem))
            except CorruptStateError as exc:
                bad.append(exc)
        return sorted(cards, key=lambda c: (c.name, _version_key(c.version))), bad

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


    def _writable(self, path: Path) -> Path:
        """`path` if writing it cannot leave the registry: every folder and file below the
        root that exists is real (no symlink), and the path resolves inside the root."""
        root = self.root.resolve()
        repair = (f"replace the symlink with a real folder (move its content in), or point "
                  f"--registry / ${ENV_VAR} at the real location")
        current = self.root
        for part in path.relative_to(self.root).parts:
            current = current / part
            if current.is_symlink():
                raise IntegrityError(
                    f"refusing to write {path}: {current} is a symlink (to "
                    f"{os.readlink(current)}); registry writes never follow symlinks",
                    where=str(self.root), repair=repair)
        if not path.resolve().is_relative_to(root):
            raise IntegrityError(f"refusing to write {path}: it resolves outside the "
                                 f"registry, to {path.resolve()}", where=str(self.root),
                                 repair=repair)
        return path


def _read_sample(path: Path) -> list[list[float]]:
    """A validation sample: a non-empty list of equally long rows of finite numbers."""
    repair = ("restore the file, or remove it and pass rows yourself: modelrail rollout "
              "start … --sample FILE")
    try:
        rows = json.loads(path.read_bytes())["rows"]
        out = [[float(v) for v in r] for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptStateError(f"validation sample is unreadable: {describe_invalid(exc)}",
                                where=str(path), repair=repair) from None
    if not out or len({len(r) for r in out}) != 1 or not out[0] or not all(
            math.isfinite(v) for r in out for v in r):
        raise CorruptStateError("validation sample is not a non-empty table of finite "
                                "numbers with equally long rows", where=str(path),
                                repair=repair)
    return out


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def parse_registry_flag(value: str | None) -> Registry:
    """Registry from a `--registry` flag value, else the environment, else the default."""
    if value is not None and not value.strip():
        raise InvalidInputError("empty --registry path", where="--registry",
                                accepted="a directory path")
    return Registry(Path(value) if value else None)
