"""kubectl (the one built from upstream) as the cluster's admin, for tests and the cluster
benchmark. Imports nothing of the test session (tests/conftest.py sets a private BentoML
home at import), so benchmarks can use it too."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from modelrail.cluster import config as c

ROOT = Path(__file__).resolve().parents[2]


def kubectl(state_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([str(c.upstream_bin() / "kubectl"), "--kubeconfig",
                          str(state_dir / "admin.kubeconfig"), *args],
                         capture_output=True, text=True, timeout=120, check=False)
    if check and run.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {run.stderr}")
    return run


def get_json(state_dir: Path, *args: str) -> Any:
    return json.loads(kubectl(state_dir, "get", *args, "-o", "json").stdout)
