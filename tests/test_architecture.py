"""The layering contracts of pyproject.toml (run by `make lint`) bite: a copy of the package
with one forbidden import added fails `lint-imports`, naming the broken contract, while the
real tree keeps every contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}  # this copy of modelrail, not the installed
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"),
                           "--no-cache"], capture_output=True, text=True, env=env,
                          cwd=src, timeout=120, check=False)


@pytest.fixture(scope="module")
def lint_ok() -> None:
    result = _lint(ROOT / "src")
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("module,code,contract", [
    ("rollout/core/_leak.py", "import time\n", "The rollout core is pure"),
    ("rollout/core/_leak.py", "from modelrail.rollout.local import store\n",
     "The rollout core is pure"),
    ("rollout/local/_leak.py", "import kubernetes\n",
     "Only the Kubernetes platform imports the Kubernetes client"),
    ("rollout/routers/_leak.py", "from modelrail.rollout.local import daemon\n",
     "The rollout wing in layers"),
    ("serving/_leak.py", "from modelrail.rollout import api\n",
     "Serving knows nothing of rollouts"),
])
def test_a_forbidden_import_breaks_its_contract(lint_ok: None, tmp_path: Path, module: str,
                                                code: str, contract: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "modelrail", src / "modelrail",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (src / "modelrail" / module).write_text(f'"""A deliberate violation."""\n{code}')
    result = _lint(src)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    report = " ".join(result.stdout.split())
    assert broken and contract in report, result.stdout[-3000:]
    assert "_leak" in report  # the report names the offending module
