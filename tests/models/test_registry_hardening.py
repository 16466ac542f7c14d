"""The registry treats its own files like user input: card fields (name, version, sha256) are
validated when read back, a reserved version ('latest') is refused at registration and at
lookup by one rule, writes never follow a symlink out of the registry, and `model list`
shows the good cards and reports a torn one (exit 6) instead of a traceback."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression

from modelrail.cli import main
from modelrail.errors import CorruptStateError, IntegrityError, InvalidInputError
from modelrail.models.card import (
    ModelCard,
    Parity,
    TensorSpec,
    TrainingData,
    check_version,
    parse_ref,
)
from modelrail.models.dataset import Split
from modelrail.models.register import register_estimator
from modelrail.models.registry import Registry

ONNX = b"not really onnx, but the registry only hashes bytes"


def fake_card(name: str = "iris", version: str = "1", data: bytes = ONNX) -> ModelCard:
    """A complete, valid card for `data` (no conversion needed to exercise the registry)."""
    digest = hashlib.sha256(data).hexdigest()
    return ModelCard(
        name=name, version=version, sha256=digest, size_bytes=len(data),
        task="classification", estimator="LogisticRegression",
        inputs=[TensorSpec(name="input", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="label", datatype="INT64", shape=[-1])],
        class_labels=[0, 1, 2], metrics={"accuracy": 0.9},
        training_data=TrainingData(sha256=digest, rows=10, features=4, holdout_rows=5,
                                   holdout_sha256=digest),
        libraries={}, opset={"ai.onnx": 18},
        parity=Parity(rows=5, label_mismatches=0, max_abs_diff=0.0, max_rel_diff=0.0,
                      tolerance_abs=1e-5, tolerance_rel=1e-5, passed=True),
        created_at="2025-01-01T00:00:00+00:00", git_commit=None, source_sha256=digest)


def _rewrite_card(registry: Registry, ref: tuple[str, str], changes: dict[str, object],
                  ) -> Path:
    path = registry.card_path(*ref)
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))
    return path


# --- identifiers read from disk -------------------------------------------------------------
@pytest.mark.parametrize("sha256", ["../../../../tmp/evil", "A" * 64, "0" * 63, "g" * 64, ""])
def test_a_cards_sha256_must_be_64_lowercase_hex(registry: Registry, sha256: str) -> None:
    with pytest.raises(ValidationError, match="64 lowercase hexadecimal"):
        ModelCard.model_validate({**fake_card().model_dump(), "sha256": sha256})
    registry.put(fake_card(), ONNX)
    path = _rewrite_card(registry, ("iris", "1"), {"sha256": sha256})
    with pytest.raises(CorruptStateError) as info:
        registry.read_verified("iris", "1")  # never builds a blob path from it
    message = str(info.value)
    assert str(path) in message and "sha256" in message and "to repair:" in message
    with pytest.raises(InvalidInputError, match="sha256"):
        registry.blob_path(sha256)


@pytest.mark.parametrize(("field", "value"), [("name", "Bad Name"), ("version", "latest"),
                                              ("version", "../2"), ("name", "other")])
def test_card_name_and_version_are_checked_on_read(registry: Registry, field: str,
                                                  value: str) -> None:
    registry.put(fake_card(), ONNX)
    path = _rewrite_card(registry, ("iris", "1"), {field: value})
    with pytest.raises(CorruptStateError) as info:
        registry.get("iris", "1")
    assert str(path) in str(info.value) and "register the model again" in str(info.value)


# --- reserved versions: one rule for registration and lookup ----------------------------------
def test_latest_is_refused_at_registration_and_lookup(registry: Registry,
                                                      iris_split: Split) -> None:
    est = LogisticRegression(max_iter=1000).fit(iris_split.X_train, iris_split.y_train)
    with pytest.raises(InvalidInputError, match="reserved") as info:
        register_estimator(estimator=est, split=iris_split, name="iris", version="latest",
                           registry=registry, source_sha256="x")
    assert "accepted:" in str(info.value)
    assert not registry.root.exists()  # nothing written, not even to BentoML's store
    import bentoml

    assert not [m for m in bentoml.models.list() if m.tag.name == "iris"
                and m.tag.version == "latest"]
    for lookup in (lambda: registry.get("iris", "latest"),
                   lambda: registry.sample("iris", "latest"),
                   lambda: check_version("latest"), lambda: parse_ref("iris:latest")):
        with pytest.raises(InvalidInputError):
            lookup()
    with pytest.raises(ValidationError, match="reserved"):
        ModelCard.model_validate({**fake_card().model_dump(), "version": "latest"})


def test_register_cli_refuses_latest_with_exit_2(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tests.models.helpers import make_split, write_model

    split = make_split("iris")
    model, data = write_model(tmp_path / "m", LogisticRegression(max_iter=1000).fit(
        split.X_train, split.y_train), split)
    code = main(["model", "register", str(model), "--data", str(data), "--name", "iris",
                 "--version", "latest", "--registry", str(tmp_path / "reg")])
    assert code == 2
    err = capsys.readouterr().err
    assert "'latest' is reserved" in err and "accepted:" in err
    assert not (tmp_path / "reg").exists()


# --- symlinks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("link", ["models/iris", "models", "blobs/sha256", "samples/iris"])
def test_writes_never_follow_a_symlink_out_of_the_registry(tmp_path: Path, link: str) -> None:
    registry = Registry(tmp_path / "reg")
    outside = tmp_path / "outside"
    outside.mkdir()
    (registry.root / link).parent.mkdir(parents=True)
    (registry.root / link).symlink_to(outside, target_is_directory=True)
    with pytest.raises(IntegrityError) as info:
        registry.put(fake_card(), ONNX)
        registry.put_sample("iris", "1", [[1.0, 2.0, 3.0, 4.0]])
    message = str(info.value)
    assert "is a symlink" in message and str(registry.root / link) in message
    assert "to repair:" in message
    assert list(outside.iterdir()) == []  # nothing landed outside


def test_a_registry_root_that_is_itself_a_symlink_works(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    registry = Registry(tmp_path / "link")
    registry.put(fake_card(), ONNX)
    registry.put_sample("iris", "1", [[1.0, 2.0, 3.0, 4.0]])
    assert registry.get("iris", "1") == fake_card()
    assert (real / "models" / "iris" / "1.json").is_file()


# --- a torn card does not hide the others -----------------------------------------------------
def _two_cards_one_torn(tmp_path: Path) -> tuple[Registry, Path]:
    registry = Registry(tmp_path / "reg")
    registry.put(fake_card("iris", "1"), ONNX)
    other = ONNX + b"2"
    registry.put(fake_card("iris", "2", other), other)
    torn = registry.card_path("iris", "2")
    torn.write_bytes(torn.read_bytes()[:100])
    return registry, torn


def test_model_list_shows_good_cards_and_reports_the_torn_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry, torn = _two_cards_one_torn(tmp_path)
    cards, bad = registry.scan()
    assert [c.ref for c in cards] == ["iris:1"] and [e.where for e in bad] == [str(torn)]
    assert [c.ref for c in registry.list()] == ["iris:1"]

    code = main(["model", "list", "--registry", str(registry.root)])
    out, err = capsys.readouterr()
    assert code == 6
    assert "iris:1" in out and "iris:2" not in out
    assert str(torn) in err and "model card is unreadable" in err and "to repair:" in err
    assert "Traceback" not in err

    code = main(["model", "list", "--registry", str(registry.root), "-o", "json"])
    out, err = capsys.readouterr()
    assert code == 6
    assert [c["version"] for c in json.loads(out)] == ["1"]
    (problem,) = json.loads(err)["unreadable"]
    assert problem["file"] == str(torn) and "register the model again" in problem["repair"]

    # the torn card itself: show and verify exit 6 naming the file
    assert main(["model", "show", "iris:2", "--registry", str(registry.root)]) == 6
    assert str(torn) in capsys.readouterr().err


def test_a_torn_sample_is_a_corrupt_state_error(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    registry.put(fake_card(), ONNX)
    registry.put_sample("iris", "1", [[1.0, 2.0], [3.0, 4.0]])
    path = registry.sample_path("iris", "1")
    for damage in (path.read_bytes()[:9], b'{"rows": [[1, 2], [3]]}', b'{"rows": []}',
                   b'{"rows": [["x"]]}', b"[]"):
        path.write_bytes(damage)
        with pytest.raises(CorruptStateError, match=re.escape(str(path))):
            registry.sample("iris", "1")


def test_registry_files_keep_the_umask_permissions(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    registry.put(fake_card(), ONNX)
    umask = os.umask(0)
    os.umask(umask)
    mode = registry.card_path("iris", "1").stat().st_mode & 0o777
    assert mode == 0o644 & ~umask


def test_stats_is_a_reserved_model_name() -> None:
    """/v2/models/stats is the statistics extension's route: a model called `stats` could
    never be reached by its metadata route, so the name is refused where names are checked."""
    from modelrail.models.card import check_name, parse_ref

    with pytest.raises(InvalidInputError, match="reserved"):
        check_name("stats")
    with pytest.raises(InvalidInputError, match="reserved"):
        parse_ref("stats:1")
    assert check_name("stats-model") == "stats-model"


def test_a_version_is_never_found_by_its_prefix() -> None:
    """BentoML's own lookup takes a version prefix (`prefixmodel:9` would find
    `prefixmodel:99-wrong`): every lookup of ours is exact, so a missing version is missing
    and registering `:9` beside `:99-wrong` is not a conflict."""
    from modelrail.errors import NotFoundError
    from modelrail.models import bento_store

    other = ONNX + b"\x00"
    bento_store.save(fake_card("prefixmodel", "99-wrong", data=other), other)
    assert bento_store.stored_sha256("prefixmodel:9") is None
    with pytest.raises(NotFoundError, match="no model prefixmodel:9"):
        bento_store.load("prefixmodel:9")
    assert bento_store.save(fake_card("prefixmodel", "9"), ONNX) == "prefixmodel:9"
    card, data = bento_store.load("prefixmodel:9")
    assert card.version == "9" and data == ONNX
