"""No process outlives its owner, on real processes: a worker whose instance is SIGKILLed
ends (lifeline), `stop()` ends every process carrying the instance's id and removes its
private home, `modelrail serve` owns its server on every way out and refuses a model it
could not load before starting anything, the local platform leaves nothing behind, and
the test session's own leak check fails a session that leaks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from modelrail.processes import (
    HOME_PREFIX,
    INSTANCE_ENV,
    ServerCommand,
    environ_of,
    free_port,
    home_of,
    instance_id_of,
    pid_alive,
    processes_with_env,
    server_command,
    spawn,
    stop,
    wait_ready,
)
from modelrail.serving.config import ModelRef, ServingConfig
from tests.conftest import Example, start_server

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `predicate` held; fails after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def all_gone(pids: list[int]) -> Callable[[], bool]:
    return lambda: not any(pid_alive(p) for p in pids)


def read_pid(path: Path, timeout: float = 30.0) -> int:
    wait_until(lambda: path.exists() and path.read_text().strip() != "", timeout,
               f"{path.name} written")
    return int(path.read_text())


def kill_all(pids: list[int]) -> None:
    """Clean-up of a test that failed half-way (never reached when it passes)."""
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def session_of(pid: int) -> tuple[int, int]:
    """(parent pid, session id) of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if session_of(int(entry.name))[0] == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


# --- the lifeline, on plain processes (no server) -------------------------------------------

def as_worker(then: str, pidfile: Path) -> str:
    """Python code: become a BentoML worker as its entry point does (worker index set, in a
    session of its own, started by the caller), bind, note our pid, then run `then`."""
    return textwrap.dedent(f"""
        import os, signal, time
        from bentoml._internal.context import server_context
        server_context.worker_index = 1
        from modelrail.serving.lifeline import bind_to_parent
        bind_to_parent()
        {then}
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """)


def parent_of(child_code: str) -> str:
    """Python code: start `child_code` in a session of its own (as circus starts a worker),
    then idle."""
    return (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            f"{child_code!r}], start_new_session=True); time.sleep(60)")


@pytest.mark.parametrize(("then", "within"), [
    ("", 3.0),  # SIGTERM from the kernel: an idle worker ends at once
    ("signal.signal(signal.SIGTERM, signal.SIG_IGN)", 9.0),  # the watchdog's SIGKILL, 5 s on
], ids=["sigterm", "sigterm-ignored"])
def test_a_worker_ends_when_its_parent_is_sigkilled(tmp_path: Path, then: str,
                                                    within: float) -> None:
    pidfile = tmp_path / "worker.pid"
    parent = subprocess.Popen([PY, "-c", parent_of(as_worker(then, pidfile))],
                              env={**os.environ, "MODELRAIL_DRAIN_SECONDS": "0"})
    worker = read_pid(pidfile)
    try:
        assert session_of(worker) == (parent.pid, worker)  # its own session, like circus's
        parent.kill()
        parent.wait()
        seconds = wait_until(all_gone([worker]), within, "the orphaned worker ends")
        print(f"worker gone {seconds:.2f} s after its parent was SIGKILLed")
    finally:
        kill_all([parent.pid, worker])


def test_a_worker_whose_parent_died_before_it_bound_ends(tmp_path: Path) -> None:
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    worker = subprocess.Popen([PY, "-c", as_worker("", tmp_path / "never.pid")],
                              env={**os.environ, "MODELRAIL_LIFELINE_PARENT": str(dead.pid)})
    try:
        assert worker.wait(30) == -signal.SIGTERM
    finally:
        kill_all([worker.pid])


def test_the_instance_process_outlives_its_starter(tmp_path: Path) -> None:
    """The local platform's instances must survive their controller (it re-adopts them):
    only workers are bound; the instance records itself for its workers."""
    pidfile = tmp_path / "instance.pid"
    code = textwrap.dedent(f"""
        import os, time
        from modelrail.serving.lifeline import PARENT_ENV, bind_to_parent
        bind_to_parent()
        assert os.environ[PARENT_ENV] == str(os.getpid())
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    starter = subprocess.Popen([PY, "-c", parent_of(code)])
    instance = read_pid(pidfile)
    try:
        starter.kill()
        starter.wait()
        time.sleep(1.5)  # three lifeline polls
        assert pid_alive(instance)
    finally:
        kill_all([starter.pid, instance])


# --- stop(): the instance id reaches what the process group does not -----------------------

def test_stop_ends_a_descendant_in_another_session_and_removes_the_home(
        tmp_path: Path) -> None:
    cmd = server_command(ServingConfig(models=(ModelRef("iris", "1"),)),
                         http_host="127.0.0.1", http_port=free_port())
    pidfile = tmp_path / "grandchild.pid"
    code = (f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', "
            f"'import time; time.sleep(60)'], start_new_session=True); "
            f"open({str(pidfile)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    fake = ServerCommand(argv=[PY, "-c", code], env=cmd.env, cwd=cmd.cwd)
    proc = spawn(fake)
    grandchild = read_pid(pidfile)
    home = home_of(proc)
    try:
        assert fake.instance_id and home is not None and home.is_dir()
        assert processes_with_env(INSTANCE_ENV, fake.instance_id) == sorted(
            [proc.pid, grandchild])
        stop(proc, timeout=5)
        assert not pid_alive(grandchild)
        assert processes_with_env(INSTANCE_ENV, fake.instance_id) == []
        assert not home.exists()
    finally:
        kill_all([proc.pid, grandchild])


# --- real servers ---------------------------------------------------------------------------

@pytest.mark.slow
def test_workers_end_when_the_instance_is_sigkilled(tmp_path: Path,
                                                    examples: dict[str, Example]) -> None:
    server = start_server(["iris:1"], tmp_path, workers=2)
    instance_id = instance_id_of(server.proc)
    assert instance_id
    pids = processes_with_env(INSTANCE_ENV, instance_id)
    workers = [p for p in pids if p != server.proc.pid]
    try:
        assert len(workers) == 2, pids
        for w in workers:  # the topology the lifeline is built for (ps -o pid,ppid,sid)
            assert session_of(w) == (server.proc.pid, w)
        os.kill(server.proc.pid, signal.SIGKILL)
        seconds = wait_until(all_gone(workers), 10, "the workers end")
        print(f"workers gone {seconds:.2f} s after the instance was SIGKILLed")
        assert processes_with_env(INSTANCE_ENV, instance_id) == []
    finally:
        stop(server.proc)
        kill_all(pids)


@pytest.mark.slow
@pytest.mark.parametrize("timeout", [15.0, 0.0], ids=["graceful", "immediate"])
def test_stop_leaves_no_process_and_no_home(tmp_path: Path, examples: dict[str, Example],
                                            timeout: float) -> None:
    server = start_server(["iris:1"], tmp_path, workers=2)
    instance_id, home = instance_id_of(server.proc), home_of(server.proc)
    assert instance_id and home is not None and home.is_dir()
    pids = processes_with_env(INSTANCE_ENV, instance_id)
    try:
        assert len(pids) == 3, pids  # the instance and its two workers
        started = time.monotonic()
        stop(server.proc, timeout=timeout)
        print(f"stop(timeout={timeout}) took {time.monotonic() - started:.2f} s")
        assert processes_with_env(INSTANCE_ENV, instance_id) == []
        assert not home.exists()
    finally:
        kill_all(pids)


@pytest.mark.slow
def test_local_environment_leaves_nothing_behind(tmp_path: Path,
                                                 examples: dict[str, Example]) -> None:
    """A SIGKILLed instance is replaced and its workers end; env.stop() (what `env down`
    runs) ends every instance, its workers and the proxy, and removes every home."""
    from modelrail.rollout.local.platform import LocalEnvironment

    env = LocalEnvironment(name="owned", run_dir=tmp_path / "owned", workers=2)
    env.start()
    seen: list[int] = []
    try:
        env.scale("iris", "stable", ref=ModelRef("iris", "1"), replicas=2)
        instances = list(env.track("iris", "stable").instances)
        ids = [instance_id_of(i.proc) for i in instances]
        homes = [home_of(i.proc) for i in instances]
        assert all(ids) and all(h is not None and h.is_dir() for h in homes)
        seen += [p for i in ids for p in processes_with_env(INSTANCE_ENV, str(i))]
        assert len(seen) == 6, seen  # two instances, two workers each

        victim = instances[0]
        victim_pids = processes_with_env(INSTANCE_ENV, str(ids[0]))
        os.kill(victim.proc.pid, signal.SIGKILL)
        wait_until(all_gone(victim_pids), 10, "the SIGKILLed instance's workers end")
        assert env.supervise()  # replaced; its home removed
        assert homes[0] is not None and not homes[0].exists()
        fresh = env.track("iris", "stable").instances[0]
        assert wait_ready(fresh.url, timeout=90, proc=fresh.proc)
        ids.append(instance_id_of(fresh.proc))
        homes.append(home_of(fresh.proc))
        seen += processes_with_env(INSTANCE_ENV, str(ids[-1]))
        router = env.router.proc
        assert router is not None
        seen.append(router.pid)

        env.stop()
        assert [p for i in ids for p in processes_with_env(INSTANCE_ENV, str(i))] == []
        assert not pid_alive(router.pid)
        assert not any(h is not None and h.exists() for h in homes)
    finally:
        env.stop()
        kill_all(seen)


# --- `modelrail serve` ----------------------------------------------------------------------

def serve(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """`modelrail serve …` as a user runs it, its temp dir (private home) in tmp_path."""
    with (tmp_path / "serve.log").open("a") as log:
        return subprocess.Popen([PY, "-m", "modelrail", "serve", *args], cwd=ROOT, text=True,
                                env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=log,
                                stderr=subprocess.STDOUT)


def homes_in(path: Path) -> list[Path]:
    return sorted(path.glob(f"{HOME_PREFIX}*"))


@contextmanager
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, list[int]]]:
    """A `modelrail serve iris:1` with two workers, ready: (the command, the server
    process, every process carrying the server's instance id)."""
    http_port = free_port()
    cli = serve(tmp_path, "iris:1", "--http-port", str(http_port), "--grpc-port",
                str(free_port()), "--workers", "2")
    pids: list[int] = []
    try:
        assert wait_ready(f"http://127.0.0.1:{http_port}", timeout=90, proc=cli), \
            (tmp_path / "serve.log").read_text()[-3000:]
        (server,) = children_of(cli.pid)
        instance_id = environ_of(server)[INSTANCE_ENV]
        pids = processes_with_env(INSTANCE_ENV, instance_id)
        assert server in pids and len(pids) == 3, pids
        assert len(homes_in(tmp_path)) == 1
        yield cli, server, pids
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        kill_all(pids)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_stops_its_server_on_a_signal(tmp_path: Path, examples: dict[str, Example],
                                            sig: signal.Signals) -> None:
    with serving(tmp_path) as (cli, _server, pids):
        cli.send_signal(sig)
        assert cli.wait(30) == 0  # the server's own exit code: a graceful stop
        assert not any(pid_alive(p) for p in pids)
        assert homes_in(tmp_path) == []


@pytest.mark.slow
def test_serve_killed_takes_its_server_along(tmp_path: Path,
                                             examples: dict[str, Example]) -> None:
    with serving(tmp_path) as (cli, _server, pids):
        cli.kill()
        cli.wait()
        seconds = wait_until(all_gone(pids), 10, "the server and its workers end")
        print(f"server and workers gone {seconds:.2f} s after `modelrail serve` was SIGKILLed")
    for home in homes_in(tmp_path):  # nobody is left to remove it: a known limit
        shutil.rmtree(home)


@pytest.mark.slow
def test_serve_exits_with_the_servers_code_when_the_server_fails(
        tmp_path: Path, examples: dict[str, Example]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cli = serve(tmp_path, "iris:1", "--http-port", str(taken.getsockname()[1]),
                    "--grpc-port", str(free_port()))
        try:
            assert cli.wait(60) == 1, (tmp_path / "serve.log").read_text()[-3000:]
        finally:
            cli.kill()
    assert "Address already in use" in (tmp_path / "serve.log").read_text()
    assert homes_in(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize(("ref", "needle"), [
    ("iris:99", "iris:99 is not registered; accepted: versions of iris: 1, 2, 3"),
    ("wine:1", "wine:1 is not registered; accepted: registered models: "),
    ("iris:1@sha256:" + "0" * 64, "pinned to sha256 " + "0" * 64),
], ids=["unknown-version", "unknown-model", "sha256-mismatch"])
def test_serve_refuses_a_model_it_could_not_load_before_starting(
        tmp_path: Path, examples: dict[str, Example], ref: str, needle: str) -> None:
    cli = serve(tmp_path, ref, "--http-port", str(free_port()), "--grpc-port",
                str(free_port()))
    try:
        code = cli.wait(60)
    finally:
        cli.kill()
    out = (tmp_path / "serve.log").read_text()
    assert code == 2 and needle in out, out
    if "@sha256:" in ref:  # names the registered hash to pin instead
        assert f"iris:1@sha256:{examples['iris:1'].card.sha256}" in out
    assert "serving" not in out and homes_in(tmp_path) == []  # nothing was started


# --- the session's leak check bites -------------------------------------------------------

INNER_CONFTEST = """
import os
from pathlib import Path
from tests.leakcheck import LeakCheck, mark_session

CHECK = LeakCheck(marker=mark_session(), stores=[Path(os.environ["INNER_STORE"])], grace=1.0)


def pytest_configure(config):
    config.pluginmanager.register(CHECK, "leak-check")
"""

INNER_TESTS = {
    "leaky": """
import os
import subprocess
from pathlib import Path

from modelrail.processes import private_bentoml_home


def test_starts_a_process_and_forgets_it():
    child = subprocess.Popen(["sleep", "60"])
    Path(os.environ["INNER_PIDFILE"]).write_text(str(child.pid))


def test_makes_a_private_home_and_forgets_it():
    private_bentoml_home(Path(os.environ["INNER_STORE"]))
""",
    "clean": """
import os
import shutil
import subprocess
from pathlib import Path

from modelrail.processes import private_bentoml_home


def test_starts_a_process_and_ends_it():
    child = subprocess.Popen(["sleep", "60"])
    child.kill()
    child.wait()


def test_makes_a_private_home_and_removes_it():
    shutil.rmtree(private_bentoml_home(Path(os.environ["INNER_STORE"])))
""",
}


@pytest.mark.parametrize("kind", ["leaky", "clean"])
def test_the_leak_check_fails_a_session_that_leaks(tmp_path: Path, kind: str) -> None:
    inner, temp, store = tmp_path / "inner", tmp_path / "tmp", tmp_path / "store"
    for d in (inner, temp, store):
        d.mkdir()
    (inner / "conftest.py").write_text(INNER_CONFTEST)
    (inner / "test_inner.py").write_text(INNER_TESTS[kind])
    pidfile = tmp_path / "leaked.pid"
    run = subprocess.run(
        [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner)], cwd=inner,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp),
             "INNER_STORE": str(store), "INNER_PIDFILE": str(pidfile)},
        capture_output=True, text=True, timeout=120, check=False)
    out = run.stdout + run.stderr
    if kind == "clean":
        assert run.returncode == 0 and "leak check" not in out, out
        return
    leaked = int(pidfile.read_text())
    try:
        assert "2 passed" in out and run.returncode == 1, out
        assert f"process {leaked} still running (killed now): sleep 60" in out, out
        assert f"private BentoML home not removed (removed now): {temp}/{HOME_PREFIX}" in out
        assert not pid_alive(leaked) and homes_in(temp) == []
    finally:
        kill_all([leaked])
