"""Where a local environment keeps its state on disk, and who writes what.

    <state-dir>/<env>/
      env.json            the controller daemon: pid, phase, proxy ports, models  (daemon)
      plane.json          running instances and proxy, for re-adoption             (daemon)
      controller.log      the daemon's log                                         (daemon)
      audit.jsonl         every rollout decision with its evidence (append-only)   (daemon)
      rollouts/<id>/
        request.json      what was asked: spec, task, who/when                     (CLI)
        sample.json       the validation sample replayed for the gate and as load  (CLI)
        commands.jsonl    promote / abort requests (append-only)                   (CLI)
        status.json       RolloutStatus + which action/command was carried out     (daemon)
        series.jsonl      one line of measurements per analysis interval           (daemon)

Each file has one writer, like a Kubernetes resource's spec (CLI) and status (controller);
whole files are replaced atomically, logs are appended line by line. The default state dir
is ./.modelrail/envs (MODELRAIL_STATE_DIR overrides it; --state-dir on the CLI).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrail.errors import InvalidInputError, NotFoundError
from modelrail.rollout.spec import RolloutSpec, RolloutStatus
from modelrail.serving.process import pid_alive

_ENV_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$")


def default_state_dir() -> Path:
    return Path(os.environ.get("MODELRAIL_STATE_DIR") or Path.cwd() / ".modelrail" / "envs")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """One line per record, written with a single O_APPEND write (whole lines only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a crashed writer: skip it, keep the rest
    return out


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

    def read_request(self) -> dict[str, Any]:
        data: dict[str, Any] = read_json(self.request)
        return data

    def spec(self) -> RolloutSpec:
        return RolloutSpec.from_dict(self.read_request()["spec"])

    def read_status(self) -> dict[str, Any] | None:
        """{"status": RolloutStatus dict, "executed_seq": int, "commands_seen": int, …}"""
        if not self.status.exists():
            return None
        data: dict[str, Any] = read_json(self.status)
        return data

    def rollout_status(self) -> RolloutStatus | None:
        data = self.read_status()
        return RolloutStatus.from_dict(data["status"]) if data else None

    def summary(self) -> dict[str, Any]:
        """Where the rollout stands, for the CLI; `done` once it ended *and* its last action
        (e.g. the rollback of an abort) was carried out."""
        saved = self.read_status()
        st = RolloutStatus.from_dict(saved["status"]) if saved else None
        spec = self.read_request()["spec"]
        return {"id": self.id, "model": spec["model"], "stable": spec["stable_version"],
                "canary": spec["canary_version"],
                "phase": st.phase.value if st else "Pending", "weight": st.weight if st else 0,
                "message": st.message if st else "waiting for the environment's controller",
                "done": bool(st and st.phase.terminal
                             and saved and saved.get("executed_seq", 0) >= st.seq),
                "started_at": st.started_at if st else None,
                "history": list(st.history) if st else []}

    def terminal(self) -> bool:
        st = self.rollout_status()
        return st is not None and st.phase.terminal


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
        if not self.env_file.exists():
            return None
        data: dict[str, Any] = read_json(self.env_file)
        return data

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
        """All rollouts, oldest first (ids start with a UTC timestamp)."""
        if not self.rollouts_dir.is_dir():
            return []
        found = [RolloutFiles(d) for d in sorted(self.rollouts_dir.iterdir())
                 if (d / "request.json").exists()]
        if model is not None:
            found = [r for r in found if r.read_request()["spec"]["model"] == model]
        return found

    def active(self, model: str | None = None) -> list[RolloutFiles]:
        return [r for r in self.rollouts(model) if not r.terminal()]

    def find(self, rollout_id: str | None, model: str | None) -> RolloutFiles:
        """One rollout: by id, else the latest (of `model`, if given)."""
        if rollout_id:
            r = RolloutFiles(self.rollouts_dir / rollout_id)
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


class EnvironmentDownError(NotFoundError):
    """The environment (or its controller) is not running."""

    exit_code = 12
