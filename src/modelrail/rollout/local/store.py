"""Where a local environment keeps its state on disk, who writes what, and the rollout
controller's RecordStore and Journal (ports.py) over those files.

    <state-dir>/<env>/
      env.json            the controller daemon: pid, phase, proxy ports, models  (daemon)
      plane.json          running instances and proxy, for re-adoption             (daemon)
      controller.log      the daemon's log                                         (daemon)
      audit.jsonl         every rollout decision with its evidence (append-only)   (daemon)
      rollouts/<id>/
        request.json      what was asked: spec, task, who/when                     (CLI)
        sample.json       the validation sample replayed for the gate and as load  (CLI)
        commands.jsonl    promote / abort requests (append-only)                   (CLI)
        status.json       the controller's RolloutRecord + commands consumed       (daemon)
        series.jsonl      one line of measurements per analysis interval           (daemon)

Each file has one writer, like a Kubernetes resource's spec (CLI) and status (controller);
whole files are replaced atomically and fsynced, logs are appended line by line and fsynced
(durable.py). The default state dir is ./.modelrail/envs (MODELRAIL_STATE_DIR overrides it;
--state-dir on the CLI).

Everything read back is validated like user input: a file that is torn, is not JSON or has
the wrong shape raises CorruptStateError naming the file, what is wrong and how to repair
it; a torn or malformed line of a .jsonl log is skipped. Rollout ids are checked against
ROLLOUT_ID_RE before they become a path.

`RolloutStore` (status.json) and `AuditJournal` (audit.jsonl and series.jsonl) are what the
local rollout runner (runner.py) gives the controller; `rollout status|history|report`
(cli/rollout.py, report.py) read the same files.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelrail.durable import append_line, atomic_write_json
from modelrail.errors import CorruptStateError, InvalidInputError, NotFoundError, describe_invalid
from modelrail.exit_codes import ExitCode
from modelrail.models.card import name_problem, version_problem
from modelrail.processes import pid_alive
from modelrail.rollout.core.analysis import (
    Measurements,
    TrafficSample,
    Verdict,
    shadow_summary,
)
from modelrail.rollout.core.engine import Action, Decision, Observation
from modelrail.rollout.core.spec import Phase, RolloutRecord, RolloutSpec, RolloutStatus
from modelrail.rollout.ports import Journal, RecordStore

_ENV_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")
# what new_rollout makes: a UTC timestamp, the model name and the version (+ "-n")
ROLLOUT_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}-[a-z0-9][-._a-z0-9]{0,160}$")
ROLLOUT_ID_ACCEPTED = ("an id as `rollout start` prints it: YYYYMMDDTHHMMSS-<model>-<version>, "
                       "lowercase letters, digits, '-', '.' and '_'")


def default_state_dir() -> Path:
    return Path(os.environ.get("MODELRAIL_STATE_DIR") or Path.cwd() / ".modelrail" / "envs")


def check_rollout_id(value: str) -> str:
    """`value` if it is a well-formed rollout id (safe as a folder name), else an error."""
    if not ROLLOUT_ID_RE.fullmatch(value):
        raise InvalidInputError(f"invalid rollout id {value[:200]!r}", where="--id",
                                accepted=ROLLOUT_ID_ACCEPTED)
    return value


def write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


def read_json(path: Path, *, repair: str) -> Any:
    """A JSON document, or CorruptStateError naming the file and saying how to `repair`."""
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptStateError(f"{path.name} is not valid JSON ({describe_invalid(exc)})",
                                where=str(path), repair=repair) from None


M = TypeVar("M", bound=BaseModel)


def read_model(path: Path, model: type[M], *, repair: str) -> M:
    """A JSON document validated by `model`; any defect is a CorruptStateError."""
    try:
        return model.model_validate_json(path.read_bytes())
    except ValueError as exc:  # pydantic's ValidationError (torn JSON too), UnicodeError
        raise CorruptStateError(f"{path.name} is unreadable: {describe_invalid(exc)}",
                                where=str(path), repair=repair) from None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One line per record, written with a single O_APPEND write (whole lines only)."""
    append_line(path, (json.dumps(record, separators=(",", ":")) + "\n").encode())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The log's records; a line that is not a JSON object (the torn last line of a crashed
    writer, or damage) is skipped so the rest stays readable."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


# --- the shapes of the files, validated on every read -------------------------------------
class _File(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


Weight = Annotated[int, Field(ge=0, le=100)]
Row = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1)]


class HistoryEntry(_File):
    """One line of RolloutStatus.history, as engine.decide writes it."""

    seq: int = Field(ge=0)
    at: float
    from_: Phase = Field(alias="from")
    to: Phase
    action: str
    weight: Weight
    message: str
    verdict: str | None = None


class SavedStatus(_File):
    """status.json: the controller's RolloutRecord (where the rollout stands, which action
    was carried out, the running load) and how many commands the runner consumed."""

    id: str
    status: RolloutStatus
    executed_seq: int = Field(ge=0)
    load_handle: str | None = None
    interval_started_at: float | None = None
    finished: bool = False  # terminal, and traffic and canary cleaned up
    commands_seen: int = Field(ge=0)
    updated_at: float | None = None

    def record(self) -> RolloutRecord:
        return RolloutRecord.from_dict(self.model_dump(mode="json"))

    @model_validator(mode="after")
    def _consistent(self) -> SavedStatus:
        st = self.status
        if not 0 <= st.weight <= 100 or st.seq < 0:
            raise ValueError(f"status: weight {st.weight} / seq {st.seq} out of range "
                             "(weight 0..100, seq >= 0)")
        for n, entry in enumerate(st.history):
            try:
                HistoryEntry.model_validate(entry)
            except ValidationError as exc:
                raise ValueError(f"status.history[{n}]: {describe_invalid(exc)}") from None
        return self


class RequestOptions(_File):
    interval: float = Field(default=3.0, gt=0)
    load_users: int = Field(default=2, ge=1)
    grpc_load: bool = True


class RolloutRequest(_File):
    """request.json: what the CLI asked for."""

    id: str
    env: str
    spec: RolloutSpec
    task: Literal["classification", "regression"]
    created_at: float | None = None
    options: RequestOptions = RequestOptions()

    @model_validator(mode="after")
    def _identifiers(self) -> RolloutRequest:
        s = self.spec
        for problem in (name_problem(s.model), version_problem(s.stable_version),
                        version_problem(s.canary_version)):
            if problem:
                raise ValueError(f"spec: {problem}")
        if not s.steps or any(not 0 < w <= 100 for w in s.steps) or any(
                a >= b for a, b in zip(s.steps, s.steps[1:], strict=False)):
            raise ValueError(f"spec.steps {list(s.steps)}: weights 1..100, strictly "
                             "increasing")
        return self


class SampleFile(_File):
    """sample.json: the validation rows, all of one width."""

    rows: list[Row] = Field(min_length=1)

    @model_validator(mode="after")
    def _rectangular(self) -> SampleFile:
        if len({len(r) for r in self.rows}) != 1:
            raise ValueError("rows: every row must have the same number of features")
        return self


class ModelTracks(_File):
    stable: str | None = None
    stable_instances: int = Field(default=0, ge=0)
    canary: str | None = None
    canary_instances: int = Field(default=0, ge=0)
    canary_weight: Weight = 0


class EnvInfo(_File):
    """env.json: what the controller publishes (or `env down` leaves behind)."""

    env: str
    phase: str
    pid: int | None = None
    message: str = ""
    project: str | None = None
    http: str | None = None
    proxy_api: str | None = None
    grpc: dict[str, str] | None = None
    models: dict[str, ModelTracks] = {}


@dataclass(frozen=True)
class RolloutFiles:
    dir: Path

    @property
    def id(self) -> str:
        return self.dir.name

    @property
    def request(self) -> Path:
        return self.dir / "request.json"

    @property
    def sample(self) -> Path:
        return self.dir / "sample.json"

    @property
    def commands(self) -> Path:
        return self.dir / "commands.jsonl"

    @property
    def status(self) -> Path:
        return self.dir / "status.json"

    @property
    def series(self) -> Path:
        return self.dir / "series.jsonl"

    @property
    def repair(self) -> str:
        """How to recover from one of this rollout's files being corrupt."""
        return (f"restore the file from a backup, or remove the rollout folder {self.dir} "
                "(its decisions stay in the environment's audit.jsonl); until then the "
                "environment's controller skips this rollout")

    def read_request(self) -> RolloutRequest:
        return read_model(self.request, RolloutRequest, repair=self.repair)

    def spec(self) -> RolloutSpec:
        return self.read_request().spec

    def read_sample(self) -> list[list[float]]:
        return read_model(self.sample, SampleFile, repair=self.repair).rows

    def read_status(self) -> SavedStatus | None:
        """The saved status; None before the controller first wrote it."""
        if not self.status.exists():
            return None
        try:
            return read_model(self.status, SavedStatus, repair=self.repair)
        except FileNotFoundError:  # the folder was removed while we looked
            return None

    def rollout_status(self) -> RolloutStatus | None:
        saved = self.read_status()
        return saved.status if saved else None

    def summary(self) -> dict[str, Any]:
        """Where the rollout stands, for the CLI; `done` once it ended *and* its traffic and
        canary were cleaned up (e.g. the rollback of an abort carried out)."""
        saved = self.read_status()
        st = saved.status if saved else None
        spec = self.read_request().spec
        return {"id": self.id, "model": spec.model, "stable": spec.stable_version,
                "canary": spec.canary_version,
                "phase": st.phase.value if st else "Pending", "weight": st.weight if st else 0,
                "message": st.message if st else "waiting for the environment's controller",
                "done": bool(saved and saved.finished),
                "started_at": st.started_at if st else None,
                # the shadow phase's evidence (None without one)
                "shadow": shadow_summary(st.shadow) if st else None,
                "history": list(st.history) if st else []}

    def finished(self) -> bool:
        """Ended and cleaned up: nothing left for a controller to do."""
        saved = self.read_status()
        return saved is not None and saved.finished

    def problem(self) -> CorruptStateError | None:
        """Why this rollout cannot be read (its request, status or sample), or None."""
        try:
            self.read_request()
            self.read_status()
            if self.sample.exists():
                self.read_sample()
        except CorruptStateError as exc:
            return exc
        return None


class EnvStore:
    """The state folder of one local environment."""

    def __init__(self, env: str, state_dir: Path | None = None) -> None:
        if not _ENV_RE.fullmatch(env):
            raise InvalidInputError(f"bad environment name {env!r}", where="ENV",
                                    accepted="lowercase letters, digits and '-' (dev, staging, "
                                             "prod, …)")
        self.env = env
        self.root = (state_dir or default_state_dir()) / env

    env_file = property(lambda self: self.root / "env.json")
    plane_file = property(lambda self: self.root / "plane.json")
    log_file = property(lambda self: self.root / "controller.log")
    audit_file = property(lambda self: self.root / "audit.jsonl")
    rollouts_dir = property(lambda self: self.root / "rollouts")
    run_dir = property(lambda self: self.root / "run")

    def read_env(self) -> dict[str, Any] | None:
        """env.json as published (validated against EnvInfo), or None if there is none."""
        if not self.env_file.exists():
            return None
        repair = (f"remove {self.env_file} (the environment's controller writes it anew "
                  f"every second), then: modelrail env up {self.env}")
        data = read_json(self.env_file, repair=repair)
        try:
            EnvInfo.model_validate(data)
        except ValueError as exc:
            raise CorruptStateError(f"env.json is unreadable: {describe_invalid(exc)}",
                                    where=str(self.env_file), repair=repair) from None
        info: dict[str, Any] = data
        return info

    def daemon_alive(self) -> bool:
        info = self.read_env()
        return bool(info and info.get("pid") and pid_alive(int(info["pid"])))

    def require_up(self) -> dict[str, Any]:
        """The env.json of a running, ready environment, or an error saying how to start it."""
        info = self.read_env()
        how = f"start it with: modelrail env up {self.env}"
        if info is None:
            raise EnvironmentDownError(f"environment {self.env!r} is not up",
                                       where=str(self.root), accepted=how)
        if not self.daemon_alive():
            raise EnvironmentDownError(
                f"environment {self.env!r} has no running controller (it stopped or was "
                f"killed; its instances may still serve)", where=str(self.log_file),
                accepted=f"{how} (adopts what still runs and resumes rollouts)")
        if info.get("phase") != "Ready":
            raise EnvironmentDownError(
                f"environment {self.env!r} is {info.get('phase')}: {info.get('message', '')}",
                where=str(self.log_file), accepted=f"wait for it, or: {how}")
        return info

    def new_rollout(self, model: str, version: str) -> RolloutFiles:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        base = f"{stamp}-{model}-{version}"
        for n in range(100):
            d = self.rollouts_dir / (base if n == 0 else f"{base}-{n}")
            try:
                d.mkdir(parents=True)
                return RolloutFiles(d)
            except FileExistsError:
                continue
        raise InvalidInputError("too many rollouts started this second", where=str(base))

    def rollouts(self, model: str | None = None) -> list[RolloutFiles]:
        """All rollouts, oldest first (ids start with a UTC timestamp). With `model`, only
        that model's: a rollout whose request is unreadable belongs to no model (see
        `unreadable`)."""
        if not self.rollouts_dir.is_dir():
            return []
        found = [RolloutFiles(d) for d in sorted(self.rollouts_dir.iterdir())
                 if ROLLOUT_ID_RE.fullmatch(d.name) and (d / "request.json").exists()]
        if model is not None:
            found = [r for r in found if _model_of(r) == model]
        return found

    def active(self, model: str | None = None) -> list[RolloutFiles]:
        """Rollouts not finished yet (cleaning up counts as running); unreadable ones are
        left out (the controller skips them too; `unreadable` lists them)."""
        return [r for r in self.rollouts(model) if _running(r)]

    def unreadable(self) -> list[tuple[RolloutFiles, CorruptStateError]]:
        """Every rollout with a torn or malformed file, and what is wrong with it."""
        found = [(r, r.problem()) for r in self.rollouts()]
        return [(r, p) for r, p in found if p is not None]

    def find(self, rollout_id: str | None, model: str | None) -> RolloutFiles:
        """One rollout: by id, else the latest (of `model`, if given)."""
        if rollout_id:
            r = RolloutFiles(self.rollouts_dir / check_rollout_id(rollout_id))
            if not r.request.exists():
                known = [x.id for x in self.rollouts()][-5:]
                raise NotFoundError(f"no rollout {rollout_id!r} in {self.env}",
                                    where=str(self.rollouts_dir),
                                    accepted=f"recent ids: {', '.join(known) or 'none'}")
            return r
        found = self.rollouts(model)
        if not found:
            raise NotFoundError(f"no rollout{f' of {model}' if model else ''} in environment "
                                f"{self.env!r} yet", where=str(self.rollouts_dir),
                                accepted=f"start one: modelrail rollout start --env {self.env} "
                                         "--model NAME:VERSION")
        return found[-1]


def _model_of(files: RolloutFiles) -> str | None:
    try:
        return files.spec().model
    except CorruptStateError:
        return None


def _running(files: RolloutFiles) -> bool:
    try:
        return not files.finished()
    except CorruptStateError:
        return False


class RolloutStore:
    """status.json of one rollout: the controller's RecordStore. `commands_seen` (set by
    the runner as it consumes commands.jsonl) is saved with every record, so a command is
    applied once across restarts."""

    def __init__(self, files: RolloutFiles) -> None:
        self.files = files
        saved = files.read_status()  # validated: a corrupt file is a CorruptStateError
        self.commands_seen = saved.commands_seen if saved else 0

    def load(self) -> RolloutRecord | None:
        """The saved record, None before the first save."""
        saved = self.files.read_status()
        return saved.record() if saved else None

    def save(self, *, record: RolloutRecord, verdict: Verdict | None) -> None:
        """Replace status.json atomically and durably (the verdict goes to the journal)."""
        write_json(self.files.status, {"id": self.files.id, **record.to_dict(),
                                       "commands_seen": self.commands_seen,
                                       "updated_at": time.time()})


class AuditJournal:
    """The environment's audit.jsonl — every decision, holds included, with its evidence
    (what `rollout history` prints and the report reads) — and the rollout's series.jsonl,
    one line per analysis interval (the report's charts)."""

    def __init__(self, *, audit_path: Path, files: RolloutFiles, env: str, spec: RolloutSpec,
                 digests: dict[str, str]) -> None:
        self.audit_path = audit_path
        self.files = files
        self.env = env
        self.spec = spec
        self.digests = digests  # version -> sha256

    def decided(self, *, before: RolloutStatus, decision: Decision,
                observation: Observation) -> None:
        """One audit line; one series line too when an interval was measured."""
        d, m, spec = decision, observation.measurements, self.spec
        append_jsonl(self.audit_path, {
            "at": observation.now, "rollout": self.files.id, "env": self.env,
            "seq": d.status.seq, "from": before.phase.value, "to": d.status.phase.value,
            "action": d.action.value, "weight": d.weight,
            # the engine repeats an action until it is seen done (a weight applied, …)
            "reissued": d.action not in (Action.HOLD, Action.COMPLETE)
                        and d.status.seq == before.seq,
            "message": d.status.message,
            "verdict": d.verdict.summary() if d.verdict else None, "model": spec.model,
            "stable": {"version": spec.stable_version,
                       "sha256": self.digests.get(spec.stable_version)},
            "canary": {"version": spec.canary_version,
                       "sha256": self.digests.get(spec.canary_version)},
            "observed_weight": observation.observed_weight,
            "checks": ([{"name": c.name, "status": c.status.name, "detail": c.detail,
                         "decisive": c.decisive} for c in d.verdict.checks]
                       if d.verdict else []),
            "measurements": None if m is None else {
                "canary": asdict(m.canary) if m.canary else None,
                "stable": asdict(m.stable) if m.stable else None,
                "gate": asdict(m.gate) if m.gate else None,
                "load": asdict(m.load) if m.load else None,
                # the headerRoute's requests to the canary, never in "canary"
                "header": asdict(m.header) if m.header else None,
                # the shadow phase: stable's mirror over this interval ("canary" is then
                # the canary's mirrored requests) and summed over the phase so far
                "shadow": asdict(m.shadow) if m.shadow else None,
                "shadow_total": d.status.shadow if m.shadow else None}})
        if m is not None:
            self._series(observation.now, before.weight, m)

    def _series(self, now: float, weight: int, m: Measurements) -> None:
        seconds = m.seconds
        append_jsonl(self.files.series, {
            "at": now, "weight": weight,
            "seconds": None if seconds is None else round(seconds, 3),
            "stable": _traffic(m.stable, seconds), "canary": _traffic(m.canary, seconds),
            "gate": asdict(m.gate) if m.gate else None,
            "load": asdict(m.load) if m.load else None,
            "shadow": asdict(m.shadow) if m.shadow else None})


def _traffic(sample: TrafficSample | None, seconds: float | None) -> dict[str, Any] | None:
    if sample is None:
        return None
    return {"requests": sample.requests, "errors": sample.errors, "p99_ms": sample.p99_ms,
            "rps": round(sample.requests / seconds, 2) if seconds else None,
            "error_rate": (sample.errors / sample.requests) if sample.requests else None}


def _check_ports(store: RolloutStore, journal: AuditJournal) -> tuple[RecordStore, Journal]:
    return store, journal  # mypy checks that both implement their ports


class EnvironmentDownError(NotFoundError):
    """The environment (or its controller) is not running."""

    exit_code = ExitCode.ENV_NOT_UP
