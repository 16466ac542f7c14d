"""Errors that a user can act on.

Every error raised for bad user input (a file, a flag, a request, a config key) derives from
`ModelrailError` and carries what was wrong, where, and what is accepted instead. The CLI
prints them without a traceback and maps each family to a documented exit code.
"""

from __future__ import annotations


class ModelrailError(Exception):
    """Base class: `str(err)` is a complete, actionable message."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, accepted: str | None = None):
        self.what = what
        self.where = where
        self.accepted = accepted
        parts = [f"{where}: {what}" if where else what]
        if accepted:
            parts.append(f"accepted: {accepted}")
        super().__init__("; ".join(parts))


class InvalidInputError(ModelrailError):
    """A file, flag or value given by the user is malformed or out of range."""

    exit_code = 2


class NotFoundError(ModelrailError):
    """A named thing (model version, environment, rollout) does not exist."""

    exit_code = 2


class ConversionError(ModelrailError):
    """skl2onnx could not convert the estimator."""

    exit_code = 3


class ParityError(ModelrailError):
    """The ONNX graph does not answer like the scikit-learn model; nothing was registered."""

    exit_code = 4


class ConflictError(ModelrailError):
    """A version is immutable and the registry already holds different bytes under it."""

    exit_code = 5


class IntegrityError(ModelrailError):
    """A stored file's sha256 does not match the one recorded when it was registered."""

    exit_code = 6
