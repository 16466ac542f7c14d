"""`modelrail bento build` works offline — run inside a network namespace with no network
when the machine allows it — and produces a Bento pinned to exact, sha256-checked model
versions whose Dockerfile exposes both ports and runs as a non-root user; the Bento then
serves."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from modelrail.processes import free_port, stop, wait_ready
from tests.conftest import Example

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _offline_prefix() -> list[str]:
    """`unshare -n` (an empty network namespace) if this machine permits it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True,
                                  check=False).returncode == 0:
        return [unshare, "-n"]
    return []


def test_bento_build_is_offline_and_pinned(examples: dict[str, Example],
                                           tmp_path: Path) -> None:
    prefix = _offline_prefix()
    cmd = [*prefix, sys.executable, "-m", "modelrail", "bento", "build", "iris:2",
           "diabetes:1", "--keep-context", str(tmp_path / "ctx")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tag = re.search(r"built Bento (\S+)", proc.stdout).group(1)  # type: ignore[union-attr]
    path = Path(re.search(r"path\s+(\S+)", proc.stdout).group(1))  # type: ignore[union-attr]

    info = yaml.safe_load((path / "bento.yaml").read_text())
    assert [m["tag"] for m in info["models"]] == ["iris:2", "diabetes:1"]
    envs = {e["name"]: e["value"] for e in info["envs"]}
    sha_iris, sha_diab = examples["iris:2"].card.sha256, examples["diabetes:1"].card.sha256
    assert envs["MODELRAIL_MODELS"] == (f"iris:2@sha256:{sha_iris},"
                                        f"diabetes:1@sha256:{sha_diab}")
    assert "latest" not in (path / "bento.yaml").read_text()

    dockerfile = (path / "env" / "docker" / "Dockerfile").read_text()
    exposed = set(re.findall(r"^EXPOSE (\d+)", dockerfile, re.M))
    assert {"3000", "8001"} <= exposed
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users[-1] == "1034:1034"  # the final user is numeric and not root
    assert "ORT_DISABLE_TELEMETRY=1" in dockerfile

    python_env = path / "env" / "python"
    pinned = (python_env / "requirements.txt").read_text()
    expected = (ROOT / "services" / "inference" / "requirements.txt").read_text()
    for line in expected.splitlines():
        if "==" in line:
            assert line.strip() in pinned
    assert "--no-deps" in (python_env / "install.sh").read_text()
    assert list((python_env / "wheels").glob("modelrail-*.whl"))

    # the packaged service serves the pinned models
    port = free_port()
    env = {**os.environ, "MODELRAIL_MODELS": envs["MODELRAIL_MODELS"],
           "MODELRAIL_GRPC_PORT": str(free_port()), "MODELRAIL_GRPC_HOST": "127.0.0.1"}
    server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", tag, "--host",
                               "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        assert wait_ready(f"http://127.0.0.1:{port}", timeout=90, proc=server)
        meta = httpx.get(f"http://127.0.0.1:{port}/v2/models/iris").json()
        assert meta["versions"] == ["2"] and meta["parameters"]["sha256"] == sha_iris
    finally:
        stop(server)


def test_lock_and_image_requirements_agree() -> None:
    """The image's pins are the development lock's pins: no drift between them."""
    lock = dict(re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)",
                           (ROOT / "requirements.lock").read_text(), re.M))
    image = dict(re.findall(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)",
                            (ROOT / "services/inference/requirements.txt").read_text(), re.M))
    assert image and all(lock.get(k) == v for k, v in image.items()), {
        k: (v, lock.get(k)) for k, v in image.items() if lock.get(k) != v}
