"""Every exit code of the `modelrail` command, in one table.

Error families (errors.py) carry theirs; the rollout commands map a finished rollout's
phase to one (rollout/api.py, `PHASE_EXIT`). CI reads these: they are a public contract,
listed in the README.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What the process's exit status means."""

    OK = 0  # success (a rollout: promoted, or accepted without --wait)
    FAILURE = 1  # an unexpected failure (a bug, or the machine): the message says what
    INVALID_INPUT = 2  # bad input, or an unknown name: the message says what is accepted
    CONVERSION = 3  # skl2onnx cannot convert the model
    PARITY = 4  # the ONNX graph does not answer like the original: nothing registered
    CONFLICT = 5  # the version exists with other bytes
    INTEGRITY = 6  # a stored file's sha256 differs, or a state file is torn or corrupt
    PACKAGING = 7  # the wheel or `bentoml build` failed
    DRIFT = 8  # environments differ in what configuration does not explain
    ROLLED_BACK = 9  # the rollout's analysis failed: traffic is back on stable
    TIMED_OUT = 10  # the progress deadline passed (or --timeout while waiting)
    ABORTED = 11  # a person aborted the rollout
    ENV_NOT_UP = 12  # the local environment is not running
    CONTAINER = 13  # an image build or the container runtime (podman, runc) failed
