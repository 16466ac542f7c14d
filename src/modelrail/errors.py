"""Errors that a user can act on.

Every error raised for bad user input (a file, a flag, a request, a config key) derives from
`ModelrailError` and carries what was wrong, where, and what is accepted instead. The CLI
prints them without a traceback and maps each family to a documented exit code.
"""

from __future__ import annotations

from modelrail.exit_codes import ExitCode


class ModelrailError(Exception):
    """Base class: `str(err)` is a complete, actionable message."""

    exit_code: int = ExitCode.FAILURE

    def __init__(self, what: str, *, where: str | None = None, accepted: str | None = None,
                 repair: str | None = None):
        self.what = what
        self.where = where
        self.accepted = accepted
        self.repair = repair
        parts = [f"{where}: {what}" if where else what]
        if accepted:
            parts.append(f"accepted: {accepted}")
        if repair:
            parts.append(f"to repair: {repair}")
        super().__init__("; ".join(parts))


class InvalidInputError(ModelrailError):
    """A file, flag or value given by the user is malformed or out of range."""

    exit_code = ExitCode.INVALID_INPUT


class NotFoundError(ModelrailError):
    """A named thing (model version, environment, rollout) does not exist."""

    exit_code = ExitCode.INVALID_INPUT


class ConversionError(ModelrailError):
    """skl2onnx could not convert the estimator."""

    exit_code = ExitCode.CONVERSION


class ParityError(ModelrailError):
    """The ONNX graph does not answer like the scikit-learn model; nothing was registered."""

    exit_code = ExitCode.PARITY


class ConflictError(ModelrailError):
    """A version is immutable and the registry already holds different bytes under it."""

    exit_code = ExitCode.CONFLICT


class IntegrityError(ModelrailError):
    """A stored file's sha256 does not match the one recorded when it was registered."""

    exit_code = ExitCode.INTEGRITY


class CorruptStateError(IntegrityError):
    """A file modelrail wrote earlier (rollout state, model card, sample) is torn, is not
    valid JSON, or has the wrong shape. `where` is the file; `repair` says how to recover
    (remove the rollout folder, restore the file, register again, …)."""

    def __init__(self, what: str, *, where: str, repair: str) -> None:
        super().__init__(what, where=where, repair=repair)

    def to_dict(self) -> dict[str, str | None]:
        """For JSON output: which file, what is wrong with it, how to repair it."""
        return {"file": self.where, "reason": self.what, "repair": self.repair}


def describe_invalid(exc: Exception, *, limit: int = 3) -> str:
    """One line saying why a file did not parse or validate: pydantic's errors by field
    (`status.phase: Input should be …`), else the exception's own message."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc) or type(exc).__name__
    items = list(errors())
    parts = [(f"{'.'.join(str(p) for p in e['loc'])}: " if e.get("loc") else "")
             + str(e.get("msg")) for e in items[:limit]]
    if len(items) > limit:
        parts.append(f"and {len(items) - limit} more")
    return "; ".join(parts)
