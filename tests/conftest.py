"""Test-wide setup: offline switches and a private BentoML home, set before any import of
bentoml or onnxruntime, so tests never touch the developer's ~/bentoml or the network; and
a leak check (tests/leakcheck.py): every process the session starts carries its marker, and
the session fails if one of them, or a server's private BentoML home, a container or a
temporary folder, outlives it. The session works in a temporary folder of its own (TMPDIR),
removed at its end with its BentoML home."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ["ORT_DISABLE_TELEMETRY"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
# a temporary folder of the session's own, for it and every process it starts: two sessions
# on one machine never take each other's folders for leftovers
os.environ["TMPDIR"] = SESSION_TMP = tempfile.mkdtemp(prefix="modelrail-test-session-")
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="modelrail-test-bentoml-",
                                              dir=SESSION_TMP)
os.environ.pop("MODELRAIL_REGISTRY", None)


# --- shared, session-wide fixtures -------------------------------------------------------

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.leakcheck import LeakCheck, mark_session

tempfile.tempdir = SESSION_TMP  # gettempdir() read /tmp before TMPDIR changed

# marks this process's environment now: every process a test starts inherits the marker
LEAK_CHECK = LeakCheck(marker=mark_session(), stores=[Path(os.environ["BENTOML_HOME"])],
                       remove=[Path(os.environ["BENTOML_HOME"]), Path(SESSION_TMP)])
EXAMPLES_SPEC = Path(__file__).resolve().parents[1] / "models" / "examples.yaml"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LEAK_CHECK, "modelrail-leak-check")


@pytest.fixture(scope="session", autouse=True)
def _leak_check_stores(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Homes of servers whose model store is a test's own copy (under tmp_path) count too."""
    LEAK_CHECK.add_store(tmp_path_factory.getbasetemp())


@dataclass
class Example:
    """A registered example model with what the tests compare it against."""

    ref: str
    estimator: Any
    split: Any
    card: Any


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry")
    os.environ["MODELRAIL_REGISTRY"] = str(path)  # inherited by servers the tests start
    return path


@pytest.fixture(scope="session")
def examples(tmp_path_factory: pytest.TempPathFactory, registry_dir: Path,
             ) -> dict[str, Example]:
    """Every example model of models/examples.yaml, trained and registered (registry and
    the session's BentoML store), as `modelrail demo` does."""
    from modelrail.models.convert import load_estimator
    from modelrail.models.dataset import load_split
    from modelrail.models.register import register_model
    from modelrail.models.registry import Registry
    from modelrail.models.train import load_spec, train_all

    registry = Registry(registry_dir)
    out: dict[str, Example] = {}
    for t in train_all(load_spec(EXAMPLES_SPEC), tmp_path_factory.mktemp("train")):
        card = register_model(model_path=t.model_path, data_path=t.data_path, name=t.name,
                              version=t.version, registry=registry).card
        out[card.ref] = Example(ref=card.ref, estimator=load_estimator(t.model_path),
                                split=load_split(t.data_path), card=card)
    return out


@dataclass
class Server:
    """A real serving process (BentoML + gRPC) on loopback."""

    http_url: str
    grpc_target: str
    proc: Any
    log: Path

    def alive(self) -> bool:
        return bool(self.proc.poll() is None)


def start_server(models: list[str], log_dir: Path, *, workers: int = 1,
                 extra_env: dict[str, str] | None = None, wait: bool = True,
                 max_request_bytes: int = 1024 * 1024) -> Server:
    from modelrail.processes import free_port, server_command, spawn, stop, wait_ready
    from modelrail.serving.config import ServingConfig

    http_port, grpc_port = free_port(), free_port()
    config = ServingConfig.from_env({
        "MODELRAIL_MODELS": ",".join(models), "MODELRAIL_GRPC_PORT": str(grpc_port),
        "MODELRAIL_GRPC_HOST": "127.0.0.1", "MODELRAIL_WORKERS": str(workers),
        "MODELRAIL_MAX_REQUEST_BYTES": str(max_request_bytes), "MODELRAIL_MAX_ROWS": "5000",
        "MODELRAIL_DRAIN_SECONDS": "10"})
    log = log_dir / f"server-{http_port}.log"
    cmd = server_command(config, http_host="127.0.0.1", http_port=http_port,
                         extra_env=extra_env)
    proc = spawn(cmd, log_path=log)
    server = Server(http_url=f"http://127.0.0.1:{http_port}",
                    grpc_target=f"127.0.0.1:{grpc_port}", proc=proc, log=log)
    if not wait:
        return server
    try:
        if not wait_ready(server.http_url, timeout=90, proc=proc):
            raise RuntimeError(f"server did not become ready; log:\n{log.read_text()[-4000:]}")
        _wait_grpc(server.grpc_target)
    except BaseException:
        stop(proc)  # a server that never became ready is still ours to end
        raise
    return server


def _wait_grpc(target: str, timeout: float = 30.0) -> None:
    import grpc

    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)


@pytest.fixture(scope="session")
def server(examples: dict[str, Example], tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[Server]:
    """One server with every example model and two workers (gRPC on a shared port)."""
    from modelrail.processes import stop

    srv = start_server(sorted(examples), tmp_path_factory.mktemp("server"), workers=2)
    yield srv
    stop(srv.proc)
