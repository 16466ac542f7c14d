"""Helpers for tests that drive local environments through the real `modelrail` CLI, as CI
does: a stack file written for the test, the CLI run as a subprocess, and an environment
that is always brought down again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def write_stack(project: Path, name: str, **config: Any) -> Path:
    """Pulumi.<name>.yaml: the dev stack with `config` keys (without the modelrail: prefix)
    replaced; serving only iris."""
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    values = doc["config"]
    values["modelrail:environment"] = name
    values["modelrail:models"] = [{"name": "iris", "version": "1"}]
    for key, value in config.items():
        values[f"modelrail:{key}"] = value
    project.mkdir(parents=True, exist_ok=True)
    path = project / f"Pulumi.{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli(*args: str, state_dir: Path, extra_env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELRAIL_STATE_DIR": str(state_dir), **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "modelrail", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def env_info(state_dir: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((state_dir / name / "env.json").read_text())
    return data


@contextmanager
def local_env(project: Path, state_dir: Path, name: str, *up_args: str,
              extra_env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """`env up` (asserted to succeed), then always `env down`."""
    try:
        up = cli("env", "up", name, "--project", str(project), *up_args,
                 state_dir=state_dir, extra_env=extra_env)
        assert up.returncode == 0, up.stdout + up.stderr
        yield env_info(state_dir, name)
    finally:
        down = cli("env", "down", name, state_dir=state_dir)
        assert down.returncode == 0, down.stdout + down.stderr
