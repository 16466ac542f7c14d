"""The local RecordStore and Journal on disk, no process started: status.json keeps the
controller's whole RolloutRecord and the commands consumed, and reads back validated;
`done` follows `finished`; the audit line of a decision carries what `rollout history`
prints, and an analysed interval adds the series line the report draws."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from modelrail.cli.rollout import _audit_entry_ok
from modelrail.rollout.core import engine
from modelrail.rollout.core.engine import Observation
from modelrail.rollout.core.spec import Phase, RolloutRecord
from modelrail.rollout.local.report import _SeriesLine
from modelrail.rollout.local.store import (
    AuditJournal,
    RolloutFiles,
    RolloutStore,
    read_jsonl,
    write_json,
)
from tests.rollout.core.test_engine import GOOD, SPEC


def files_in(tmp_path: Path) -> RolloutFiles:
    files = RolloutFiles(tmp_path / "20250101T000000-iris-2")
    files.dir.mkdir()
    write_json(files.request, {"id": files.id, "env": "dev", "spec": SPEC.to_dict(),
                               "task": "classification"})
    return files


def test_the_record_and_the_commands_round_trip(tmp_path: Path) -> None:
    files = files_in(tmp_path)
    store = RolloutStore(files)
    assert store.load() is None and store.commands_seen == 0
    record = RolloutRecord(status=engine.start(100.0), executed_seq=0,
                           load_handle="locust-abc", interval_started_at=101.5)
    store.commands_seen = 3
    store.save(record=record, verdict=None)
    again = RolloutStore(files)  # a restarted runner
    assert again.load() == record and again.commands_seen == 3
    assert not files.finished() and not files.summary()["done"]
    ended = record.evolve(status=record.status.evolve(phase=Phase.ABORTED))
    again.save(record=ended, verdict=None)
    assert not files.summary()["done"]  # ended, but its canary is not cleaned up yet
    again.save(record=ended.evolve(finished=True), verdict=None)
    assert files.finished() and files.summary()["done"]


def test_a_decision_is_audited_and_an_interval_charted(tmp_path: Path) -> None:
    files = files_in(tmp_path)
    audit = tmp_path / "audit.jsonl"
    journal = AuditJournal(audit_path=audit, files=files, env="dev", spec=SPEC,
                           digests={"1": "a" * 64, "2": "b" * 64})
    before = engine.start(0.0)
    measured = Observation(now=10.0, canary_ready=True,
                           measurements=replace(GOOD, seconds=4.0))
    decision = engine.decide(SPEC, before, measured)
    journal.decided(before=before, decision=decision, observation=measured)
    (line,) = read_jsonl(audit)
    assert _audit_entry_ok(line)
    assert (line["action"], line["weight"], line["reissued"]) == ("set_weight", 10, False)
    assert line["canary"] == {"version": "2", "sha256": "b" * 64}
    load = line["measurements"]["load"]
    assert (load["requests"], load["failures"], load["error"]) == (300, 0, None)
    (point,) = read_jsonl(files.series)
    series = _SeriesLine.model_validate(point)
    assert series.canary is not None and series.canary.rps == 50.0  # 200 requests in 4 s
    # the same action again, while the proxy has not applied it: marked, not charted
    again = engine.decide(SPEC, decision.status, Observation(now=11.0, canary_ready=True,
                                                             observed_weight=0))
    journal.decided(before=decision.status, decision=again,
                    observation=Observation(now=11.0, observed_weight=0))
    assert read_jsonl(audit)[-1]["reissued"] and len(read_jsonl(files.series)) == 1
