"""durable.py, and every writer of a state, card, sample, route or report file going through
it: the file and its folder are fsynced, a failed write leaves the old content and no
temporary file behind, and append-only logs fsync each whole line."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelrail import durable

Fsyncs = list[tuple[bool, int]]  # (is a folder, inode) of every fsync call


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fsyncs]:
    """Record what each os.fsync call made durable (and still do it)."""
    seen: Fsyncs = []
    real = os.fsync

    def record(fd: int) -> None:
        st = os.fstat(fd)
        seen.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    yield seen


def assert_durable(path: Path, fsyncs: Fsyncs) -> None:
    """`path`'s content and its entry in its folder were fsynced."""
    assert (False, path.stat().st_ino) in fsyncs, f"{path} was not fsynced"
    assert (True, path.parent.stat().st_ino) in fsyncs, f"{path.parent} was not fsynced"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_the_file_durably(tmp_path: Path, fsyncs: Fsyncs) -> None:
    target = tmp_path / "sub" / "state.json"
    durable.atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert_durable(target, fsyncs)
    durable.atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert_durable(target, fsyncs)
    assert leftovers(target.parent) == []


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    target = tmp_path / "status.json"
    durable.atomic_write_text(target, "old")

    def boom(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="No space left"):
        durable.atomic_write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert leftovers(tmp_path) == []


def test_json_that_cannot_be_serialised_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    with pytest.raises(TypeError):
        durable.atomic_write_json(target, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_create_exclusive_never_replaces(tmp_path: Path, fsyncs: Fsyncs) -> None:
    target = tmp_path / "card.json"
    assert durable.create_exclusive_bytes(target, b"first") is True
    assert_durable(target, fsyncs)
    assert durable.create_exclusive_bytes(target, b"second") is False
    assert target.read_bytes() == b"first"
    assert leftovers(tmp_path) == []


def test_append_line_is_one_write_per_line_and_fsynced(tmp_path: Path, fsyncs: Fsyncs,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "audit.jsonl"
    writes: list[bytes] = []
    real_write = os.write

    def record(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", record)
    durable.append_line(log, b'{"n":1}')
    durable.append_line(log, b'{"n":2}\n')
    assert log.read_bytes() == b'{"n":1}\n{"n":2}\n'
    assert writes == [b'{"n":1}\n', b'{"n":2}\n']
    assert fsyncs.count((False, log.stat().st_ino)) == 2
    assert (True, tmp_path.stat().st_ino) in fsyncs  # the new log's folder entry


def test_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        durable.atomic_write_text(tmp_path / "a", "x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644


# --- every writer of a kept file goes through durable.py ----------------------------------------
def _store_state(tmp: Path) -> Path:
    from modelrail.rollout.local.store import write_json

    write_json(tmp / "envs" / "dev" / "env.json", {"env": "dev", "phase": "Ready"})
    return tmp / "envs" / "dev" / "env.json"


def _store_log(tmp: Path) -> Path:
    from modelrail.rollout.local.store import append_jsonl

    append_jsonl(tmp / "audit.jsonl", {"a": 1})
    return tmp / "audit.jsonl"


def _registry_card(tmp: Path) -> Path:
    from modelrail.models.registry import Registry
    from tests.models.test_registry_hardening import ONNX, fake_card

    registry = Registry(tmp / "reg")
    registry.put(fake_card(), ONNX)
    return registry.card_path("iris", "1")


def _registry_blob(tmp: Path) -> Path:
    from modelrail.models.registry import Registry
    from tests.models.test_registry_hardening import ONNX, fake_card

    registry = Registry(tmp / "reg")
    registry.put(fake_card(), ONNX)
    return registry.blob_path(fake_card().sha256)


def _registry_sample(tmp: Path) -> Path:
    from modelrail.models.registry import Registry

    registry = Registry(tmp / "reg")
    registry.put_sample("iris", "1", [[1.0, 2.0]])
    return registry.sample_path("iris", "1")


def _bentoml_card(tmp: Path) -> Path:
    import bentoml

    from modelrail.models import bento_store
    from tests.models.test_registry_hardening import ONNX, fake_card

    card = fake_card("durable-probe", tmp.name.replace("_", "-")[-40:].strip("-"))
    bento_store.save(card, ONNX)
    return Path(bentoml.models.get(bento_store.tag_of(card)).path_of(bento_store.CARD_FILE))


def _traefik_routes(tmp: Path) -> Path:
    from modelrail.rollout.routers.traefik import TraefikRouter

    router = TraefikRouter(http_port=1, grpc_port=2, api_port=3, workdir=tmp / "traefik")
    router.set_pools(route="iris", stable=[(10, 11)], canary=[])  # no process started
    return router.dynamic_dir / "routes.yaml"


def _report(tmp: Path) -> Path:
    from modelrail.rollout.local.report import write_report

    return write_report(tmp / "out" / "report.html", [], title="empty")


WRITERS: dict[str, Callable[[Path], Path]] = {
    "rollout state (store.write_json)": _store_state,
    "audit log (store.append_jsonl)": _store_log,
    "registry card": _registry_card,
    "registry blob": _registry_blob,
    "registry sample": _registry_sample,
    "BentoML card": _bentoml_card,
    "traefik routes": _traefik_routes,
    "HTML report": _report,
}


@pytest.mark.parametrize("writer", list(WRITERS), ids=list(WRITERS))
def test_every_kept_file_is_written_durably(writer: str, tmp_path: Path,
                                            fsyncs: Fsyncs) -> None:
    path = WRITERS[writer](tmp_path)
    assert_durable(path, fsyncs)
    assert leftovers(path.parent) == []
