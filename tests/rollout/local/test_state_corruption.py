"""A torn or malformed state file of one rollout: every reader says which file, what is wrong
and how to repair it (CorruptStateError, exit 6) instead of a traceback; the environment's
controller skips that rollout alone and keeps the others going; `env status` reports it;
followers ride out a transient unreadable read; rollout ids are checked before they become
a path; the HTML report escapes what it takes from the files. No process is started: real
state folders on disk, the CLI through its main()."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelrail.cli import main
from modelrail.errors import CorruptStateError, InvalidInputError
from modelrail.models.registry import Registry
from modelrail.rollout.core.spec import Phase, RolloutRecord, RolloutSpec, RolloutStatus, Thresholds
from modelrail.rollout.local.daemon import Daemon
from modelrail.rollout.local.platform import LocalEnvironment
from modelrail.rollout.local.runner import LocalRunner
from modelrail.rollout.local.store import (
    EnvStore,
    RolloutFiles,
    RolloutStore,
    read_jsonl,
    write_json,
)
from tests.models.test_registry_hardening import fake_card
from tests.rollout.envs import write_stack

THRESHOLDS = Thresholds(max_error_rate=0.01, max_p99_latency_ms=250, max_latency_ratio=5.0,
                        max_error_rate_increase=0.01, max_label_disagreement=0.1,
                        min_requests=30)
OLD, BAD, NEW = "20250101T000000-iris-2", "20250101T000100-iris-3", "20250101T000200-iris-4"


def spec(canary: str) -> RolloutSpec:
    return RolloutSpec(model="iris", stable_version="1", canary_version=canary,
                       steps=(50, 100), step_seconds=4, thresholds=THRESHOLDS,
                       failure_limit=1, progress_deadline_seconds=120)


def saved_status(rid: str, phase: Phase, message: str = "analysis failed") -> dict[str, object]:
    entry = {"seq": 1, "at": 101.0, "from": "Progressing", "to": phase.value,
             "action": "rollback", "weight": 0, "message": message, "verdict": message}
    status = RolloutStatus(phase=phase, seq=1, started_at=100.0, message=message,
                           history=(entry,))
    return {"id": rid, "status": status.to_dict(), "executed_seq": 1, "commands_seen": 0,
            "updated_at": 102.0, "finished": phase.terminal}


def make_rollout(store: EnvStore, rid: str, *, phase: Phase | None = Phase.ROLLED_BACK,
                 message: str = "analysis failed") -> RolloutFiles:
    files = RolloutFiles(store.rollouts_dir / rid)
    write_json(files.request, {
        "id": rid, "env": store.env, "spec": spec(rid.rsplit("-", 1)[1]).to_dict(),
        "task": "classification", "created_at": 1.0,
        "options": {"interval": 1.0, "load_users": 1, "grpc_load": False}})
    write_json(files.sample, {"rows": [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5]]})
    if phase is not None:
        write_json(files.status, saved_status(rid, phase, message))
    return files


def tear(path: Path) -> None:
    """What a crash mid-write (without fsync) can leave: the first part of the file."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


@pytest.fixture
def store(tmp_path: Path) -> EnvStore:
    return EnvStore("dev", tmp_path / "state")


def cli(store: EnvStore, *args: str) -> int:
    return main([*args, "--state-dir", str(store.root.parent)])


# --- readers: typed error naming the file, the defect and the repair ----------------------------
DAMAGE = {
    "truncated": tear,
    "not utf-8": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
    "a JSON list": lambda p: p.write_text("[1, 2]"),
    "unknown phase": lambda p: p.write_text(p.read_text().replace('"RolledBack"', '"Gone"')),
    "weight out of range": lambda p: p.write_text(
        p.read_text().replace('"weight": 0', '"weight": 900', 1)),
    "history entry without its action": lambda p: p.write_text(
        p.read_text().replace('"action": "rollback",', "")),
    "executed_seq missing": lambda p: p.write_text(
        p.read_text().replace('"executed_seq": 1,', "")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_status_is_a_corrupt_state_error(store: EnvStore, damage: str) -> None:
    files = make_rollout(store, OLD)
    DAMAGE[damage](files.status)
    with pytest.raises(CorruptStateError) as info:
        files.read_status()
    err = info.value
    assert err.exit_code == 6 and err.where == str(files.status)
    assert "status.json" in err.what
    assert f"remove the rollout folder {files.dir}" in str(err) and "restore" in str(err)


@pytest.mark.parametrize("damage", ["truncated", "bad model name", "steps not increasing",
                                    "unknown task"])
def test_a_damaged_request_is_a_corrupt_state_error(store: EnvStore, damage: str) -> None:
    files = make_rollout(store, OLD)
    text = files.request.read_text()
    if damage == "truncated":
        tear(files.request)
    elif damage == "bad model name":
        files.request.write_text(text.replace('"model": "iris"', '"model": "../Iris"'))
    elif damage == "steps not increasing":
        files.request.write_text(text.replace('"steps": [\n      50,\n      100\n    ]',
                                              '"steps": [100, 50]'))
    else:
        files.request.write_text(text.replace('"classification"', '"clustering"'))
    assert files.request.read_text() != text
    with pytest.raises(CorruptStateError, match=r"request\.json"):
        files.read_request()
    assert files.problem() is not None


def test_a_malformed_env_json_is_a_corrupt_state_error(store: EnvStore) -> None:
    write_json(store.env_file, {"env": "dev", "phase": "Ready", "pid": "not a pid"})
    with pytest.raises(CorruptStateError, match=r"env\.json"):
        store.read_env()


def test_log_lines_that_are_not_objects_are_skipped(tmp_path: Path) -> None:
    log = tmp_path / "commands.jsonl"
    log.write_text('{"command": "abort"}\n3\n"x"\n[1]\n{"command": "pro')
    assert read_jsonl(log) == [{"command": "abort"}]


def test_every_status_the_engine_produces_reads_back(store: EnvStore) -> None:
    """The validation refuses damage, not real data: a whole promotion and a rollback,
    persisted by the controller's record store after every decision, read back unchanged."""
    from modelrail.rollout.core.analysis import Measurements, TrafficSample
    from tests.rollout.core.test_engine import GOOD, Driver

    bad = Measurements(canary=TrafficSample(200, 150, 5.0), stable=GOOD.stable,
                       gate=GOOD.gate, load=GOOD.load)
    for rid, plan in ((OLD, [GOOD] * 40), (BAD, [GOOD] * 3 + [bad] * 5)):
        files = make_rollout(store, rid, phase=None)
        records = RolloutStore(files)
        drv = Driver()
        drv.tick()
        drv.tick(canary_ready=True)
        for m in plan:
            if drv.status.phase.terminal:
                break
            drv.tick(2.0, measurements=m, promoted=drv.status.phase is Phase.PROMOTING,
                     rolled_back=drv.status.phase is Phase.ROLLING_BACK)
            record = RolloutRecord(status=drv.status, executed_seq=drv.status.seq,
                                   load_handle="locust-1", interval_started_at=drv.now,
                                   finished=drv.status.phase.terminal)
            records.save(record=record, verdict=None)
            assert records.load() == record and files.rollout_status() == drv.status
        assert files.summary()["done"] and files.problem() is None
    phases = [RolloutFiles(store.rollouts_dir / r).summary()["phase"] for r in (OLD, BAD)]
    assert phases == ["Succeeded", "RolledBack"]


# --- the CLI: exit 6 with the file and the repair, never a traceback ------------------------------
def test_status_abort_report_of_a_torn_rollout_exit_6(store: EnvStore,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    files = make_rollout(store, OLD)
    tear(files.status)
    for args in (("rollout", "status", "--env", "dev", "--id", OLD),
                 ("rollout", "status", "--env", "dev"),
                 ("rollout", "abort", "--env", "dev", "--id", OLD),
                 ("rollout", "report", "--env", "dev", "--id", OLD)):
        assert cli(store, *args) == 6, args
        err = capsys.readouterr().err
        assert str(files.status) in err and "to repair:" in err, (args, err)
    assert not (store.root / "report.html").exists()


def test_report_all_marks_the_unreadable_rollout_and_keeps_the_rest(
        store: EnvStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_rollout(store, OLD)
    tear(make_rollout(store, BAD).request)
    out = tmp_path / "report.html"
    code = cli(store, "rollout", "report", "--env", "dev", "--all", "--out", str(out), "-o",
               "json")
    assert code == 6
    result = json.loads(capsys.readouterr().out)
    assert result["rollouts"] == [OLD]
    assert [u["id"] for u in result["unreadable"]] == [BAD]
    assert result["unreadable"][0]["file"].endswith(f"{BAD}/request.json")
    html = out.read_text()
    assert f"{OLD}: iris 1 → 2" in html and "unreadable" in html and "request.json" in html


def test_env_status_reports_the_unreadable_rollout_and_stays_ready(
        store: EnvStore, capsys: pytest.CaptureFixture[str]) -> None:
    write_json(store.env_file, {"env": "dev", "phase": "Ready", "pid": os.getpid(),
                                "message": "serving", "http": "http://127.0.0.1:1",
                                "proxy_api": "http://127.0.0.1:2", "grpc": {},
                                "models": {}})
    make_rollout(store, OLD)
    make_rollout(store, NEW, phase=Phase.PROGRESSING)
    tear(make_rollout(store, BAD).status)
    assert cli(store, "env", "status", "dev") == 0  # the environment itself is fine
    out, err = capsys.readouterr()
    assert "Ready" in out and f"rollout {NEW}" in out
    assert f"rollout {BAD} is unreadable" in err and str(store.rollouts_dir / BAD) in err
    assert cli(store, "env", "status", "dev", "-o", "json") == 0
    info = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in info["rollouts"]] == [OLD, NEW]
    (bad,) = info["unreadable_rollouts"]
    assert bad["id"] == BAD and bad["file"].endswith("status.json") and bad["repair"]


# --- the controller: one bad rollout is skipped, the others run -----------------------------------
class RecordingDaemon(Daemon):
    """The real daemon's rollout scan; only starting a worker thread is recorded instead
    (a worker would start serving processes)."""

    launched: list[str]

    def _launch(self, runner: LocalRunner) -> None:
        self.launched.append(runner.files.id)
        worker = threading.Thread(target=self.stopping.wait, daemon=True)  # "running"
        self.workers[runner.files.id] = worker
        worker.start()


@pytest.fixture
def daemon(store: EnvStore, tmp_path: Path) -> Iterator[RecordingDaemon]:
    write_stack(tmp_path / "project", "dev")
    d = RecordingDaemon(env="dev", project=tmp_path / "project",
                        state_dir=store.root.parent, models=[], max_replicas=None,
                        target_in_flight=2.0)
    d.launched = []
    d.registry = Registry(tmp_path / "reg")
    for version in ("1", "2", "3", "4"):
        data = f"model {version}".encode()
        d.registry.put(fake_card("iris", version, data), data)
    d.env = LocalEnvironment(name="dev", run_dir=store.run_dir)  # not started
    yield d
    d.stopping.set()
    for worker in d.workers.values():
        worker.join(5)


def test_the_controller_skips_a_corrupt_rollout_and_runs_the_others(
        daemon: RecordingDaemon, store: EnvStore, caplog: pytest.LogCaptureFixture) -> None:
    make_rollout(store, OLD)  # finished
    bad = make_rollout(store, BAD, phase=Phase.PROGRESSING)
    tear(bad.status)
    make_rollout(store, NEW, phase=None)  # new: the controller starts it
    with caplog.at_level(logging.ERROR, logger="modelrail.env"):
        daemon._start_rollouts()
        daemon._start_rollouts()  # next tick: still skipped, not logged again
    assert daemon.launched == [NEW]
    assert daemon.finished == {OLD}
    assert BAD in daemon.skipped and str(bad.status) in daemon.skipped[BAD]
    logged = [r.getMessage() for r in caplog.records if BAD in r.getMessage()]
    assert len(logged) == 1 and str(bad.status) in logged[0] and "unreadable" in logged[0]
    assert RolloutFiles(store.rollouts_dir / NEW).rollout_status() is not None  # it ticks

    # restored from a backup: picked up on the next tick
    write_json(bad.status, saved_status(BAD, Phase.PROGRESSING))
    daemon._start_rollouts()
    assert daemon.launched == [NEW, BAD] and BAD not in daemon.skipped


# --- followers ride out a transient unreadable read -----------------------------------------------
def test_watch_rides_out_a_transient_unreadable_status(
        store: EnvStore, capsys: pytest.CaptureFixture[str]) -> None:
    files = make_rollout(store, OLD)
    good = files.status.read_bytes()
    tear(files.status)

    def restore() -> None:
        time.sleep(0.8)
        files.status.write_bytes(good)

    fixer = threading.Thread(target=restore)
    fixer.start()
    code = cli(store, "rollout", "status", "--env", "dev", "--id", OLD, "--watch")
    fixer.join()
    assert code == 9, capsys.readouterr().err  # RolledBack, read once the file was back
    assert "ROLLED BACK" in capsys.readouterr().out


def test_watch_gives_up_on_a_file_that_stays_unreadable(
        store: EnvStore, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from modelrail.cli import rollout as rollout_cli

    monkeypatch.setattr(rollout_cli, "READ_GRACE_SECONDS", 0.6)
    files = make_rollout(store, OLD)
    tear(files.status)
    started = time.monotonic()
    assert cli(store, "rollout", "status", "--env", "dev", "--id", OLD, "--watch") == 6
    assert 0.6 <= time.monotonic() - started < 5
    assert str(files.status) in capsys.readouterr().err


# --- rollout ids are checked before they become a path --------------------------------------------
def test_a_rollout_id_cannot_leave_the_rollouts_folder(store: EnvStore, tmp_path: Path) -> None:
    outside = make_rollout(EnvStore("dev", tmp_path / "elsewhere"), OLD)  # a real rollout
    escape = os.path.relpath(outside.dir, store.rollouts_dir)
    assert escape.startswith("..")
    with pytest.raises(InvalidInputError, match="invalid rollout id") as info:
        store.find(escape, None)
    assert "YYYYMMDDTHHMMSS" in str(info.value)
    for bad in (escape, "../x", "20250101T000000-iris-2/../../x", "/etc"):
        with pytest.raises(SystemExit) as exit_info:
            cli(store, "rollout", "status", "--env", "dev", "--id", bad)
        assert exit_info.value.code == 2


# --- the report escapes what it reads -------------------------------------------------------
def test_the_report_escapes_every_string_from_the_files(store: EnvStore, tmp_path: Path) -> None:
    evil = "<script>alert('x')</script>"
    make_rollout(store, OLD, message=evil)
    out = tmp_path / "r.html"
    assert cli(store, "rollout", "report", "--env", "dev", "--id", OLD, "--out", str(out)) == 0
    html = out.read_text()
    assert "<script" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
