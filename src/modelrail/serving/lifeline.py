"""Ties a serving worker's life to its instance, however the instance ends.

BentoML's `bentoml serve` process (the circus arbiter, "the instance") starts each worker
in a session of its own, so neither a signal to the instance's process group nor the
instance's own death reaches the workers: a worker whose instance was SIGKILLed keeps
serving on the old socket. `services/inference/service.py` calls `bind_to_parent()` first
thing, in the instance process (which imports the service to read its configuration) and
in every worker:

- in the instance, it only records the instance's pid in the environment
  (MODELRAIL_LIFELINE_PARENT), which circus copies into the workers it starts;
- in a worker, it asks the kernel for SIGTERM when the parent dies (prctl
  PR_SET_PDEATHSIG), checks that the parent has not died already (before the worker ran
  this far), and starts a watchdog thread that polls getppid(): it sends the SIGTERM itself
  if prctl is unavailable, and SIGKILLs the worker if it still runs
  MODELRAIL_DRAIN_SECONDS + 5 s later.

The kernel signals when the *thread* that forked the worker ends; circus forks from the
instance's main thread, which lives as long as the instance.

SIGTERM, not SIGKILL, on purpose: uvicorn and the gRPC server then stop accepting and
finish the requests in flight (MODELRAIL_DRAIN_SECONDS), which costs nothing since the
replacement instance gets new ports; the watchdog's SIGKILL bounds a drain that hangs.
Measured: idle workers end 0.15 s after their instance is SIGKILLed; a request 0.5 s into
a 2 s inference completes with 200 and its worker ends right after.

`set_parent_death_signal()` (modelrail.processes) also ties a `modelrail serve`
server to the command that started it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from modelrail.processes import pid_alive, set_parent_death_signal

PARENT_ENV = "MODELRAIL_LIFELINE_PARENT"
POLL_SECONDS = 0.5
# a worker still alive this long after MODELRAIL_DRAIN_SECONDS has run out is SIGKILLed
KILL_MARGIN_SECONDS = 5.0
def bind_to_parent() -> None:
    """In a BentoML worker: end when the instance that started it ends, however it ends.
    In the instance itself: tell the workers it is about to start which process that is."""
    if not _is_worker():
        # circus copies this environment into every worker it starts; the instance itself
        # is not bound: it must outlive the controller that started it (adoption)
        os.environ[PARENT_ENV] = str(os.getpid())
        return
    tie_to_parent(grace=_drain_seconds() + KILL_MARGIN_SECONDS)


def tie_to_parent(*, grace: float) -> None:
    """SIGTERM this process when its parent dies, SIGKILL it `grace` seconds later."""
    parent = _expected_parent()
    armed = set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the kernel was watching
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch, args=(parent, grace, armed), daemon=True,
                     name="modelrail-lifeline").start()


def _watch(parent: int, grace: float, armed: bool) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    if not armed:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace)
    os.kill(os.getpid(), signal.SIGKILL)


def _expected_parent() -> int:
    """The pid this process must not outlive: the instance that recorded itself in the
    environment if that is still our parent or is dead (then we are orphaned already),
    else whatever our parent is now (a launcher we do not know: trust the kernel)."""
    ppid = os.getppid()
    recorded = os.environ.get(PARENT_ENV, "")
    if not recorded.isdigit() or int(recorded) == ppid:
        return ppid
    return ppid if pid_alive(int(recorded)) else int(recorded)


def _is_worker() -> bool:
    """Whether this process is a BentoML worker: its entry point sets the worker index
    before it imports the service; the instance process leaves it unset."""
    context = sys.modules.get("bentoml._internal.context")
    server_context = getattr(context, "server_context", None)
    return getattr(server_context, "worker_index", None) is not None


def _drain_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("MODELRAIL_DRAIN_SECONDS", "10")))
    except ValueError:
        return 10.0
