"""Adapter to BentoML's model store: the only module of `models` that imports bentoml.

Registering a model also saves it here under the pinned tag `name:version` (never
`:latest`), holding `model.onnx` and `card.json`, so `bentoml build` can package an exact
version. The store's location is BentoML's own (`BENTOML_HOME`, default ~/bentoml). Both
files are written durably (durable.py) and the card is validated when read back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import modelrail  # noqa: F401  # BENTOML_DO_NOT_TRACK before bentoml loads
from modelrail.durable import atomic_write_bytes, atomic_write_text, fsync_tree
from modelrail.errors import (
    ConflictError,
    CorruptStateError,
    IntegrityError,
    NotFoundError,
    describe_invalid,
)
from modelrail.models.card import ModelCard

ONNX_FILE = "model.onnx"
CARD_FILE = "card.json"


def tag_of(card: ModelCard) -> str:
    return f"{card.name}:{card.version}"


def _get_exact(tag: str) -> Any | None:
    """BentoML's model under exactly `tag`, or None. (BentoML's own lookup also takes a
    version *prefix*: `iris:9` would find `iris:99-wrong`, a different model.)"""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound:
        return None
    return model if str(model.tag) == tag else None


def save(card: ModelCard, onnx_bytes: bytes) -> str:
    """Save (or confirm) the model under its pinned tag; returns the tag."""
    import bentoml

    tag = tag_of(card)
    existing = _get_exact(tag)
    if existing is not None:
        stored = hashlib.sha256(Path(existing.path_of(ONNX_FILE)).read_bytes()).hexdigest()
        if stored != card.sha256:
            raise ConflictError(
                f"BentoML's model store already holds {tag} with sha256 {stored}, "
                f"not {card.sha256}", where=f"bentoml model {tag}",
                accepted=f"a new version, or delete the stale copy: bentoml models delete {tag}")
        return tag
    with bentoml.models.create(
        tag,
        labels={"modelrail.sha256": card.sha256[:63], "task": card.task},
        metadata={"sha256": card.sha256, "estimator": card.estimator,
                  "source": "modelrail registry"},
    ) as model:
        atomic_write_bytes(Path(model.path_of(ONNX_FILE)), onnx_bytes)
        atomic_write_text(Path(model.path_of(CARD_FILE)), card.model_dump_json(indent=2))
    # BentoML copies that folder into its store on leaving the block: make the copy durable
    fsync_tree(Path(bentoml.models.get(tag).path))
    return tag


def stored_sha256(tag: str) -> str | None:
    """sha256 of the ONNX file BentoML holds under `tag`, or None if it holds none."""

    model = _get_exact(tag)
    if model is None:
        return None
    path = Path(model.path_of(ONNX_FILE))
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def model_dir(tag: str) -> Path:
    """The folder BentoML keeps model `tag` in (card, ONNX file, model.yaml); verify its
    bytes with `load` before shipping it anywhere."""
    model = _get_exact(tag)
    if model is None:
        raise NotFoundError(f"no model {tag} in BentoML's model store", where="bentoml",
                            accepted="a tag saved by `modelrail model register`")
    return Path(model.path)


def load(tag: str) -> tuple[ModelCard, bytes]:
    """The card and verified ONNX bytes of a model in BentoML's store."""

    model = _get_exact(tag)
    if model is None:
        raise NotFoundError(f"no model {tag} in BentoML's model store", where="bentoml",
                            accepted="a tag saved by `modelrail model register`")
    card_path = Path(model.path_of(CARD_FILE))
    try:
        card = ModelCard.model_validate_json(card_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CorruptStateError(
            f"the model card BentoML holds for {tag} is unreadable: {describe_invalid(exc)}",
            where=str(card_path),
            repair=f"delete the copy (bentoml models delete {tag}) and register the model "
                   "again from the registry") from None
    if tag_of(card) != tag:
        raise CorruptStateError(f"the model card BentoML holds for {tag} says it is "
                                f"{tag_of(card)}", where=str(card_path),
                                repair=f"delete the copy (bentoml models delete {tag}) and "
                                       "register the model again")
    data = Path(model.path_of(ONNX_FILE)).read_bytes()
    check_bytes(card, data, where=f"bentoml model {tag} ({model.path_of(ONNX_FILE)})")
    return card, data


def check_bytes(card: ModelCard, data: bytes, *, where: str) -> None:
    """Refuse bytes whose sha256 is not the one registered, naming both hashes."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != card.sha256:
        raise IntegrityError(
            f"sha256 mismatch for {card.ref}: registered {card.sha256}, file has {actual}",
            where=where, accepted="the file exactly as registered; re-register under a new "
                                  "version if the model changed")
