"""The one error type of the serving path, mapped to HTTP status and gRPC status code.

Raised anywhere between receiving bytes and running onnxruntime; the REST and gRPC
adapters translate it. Messages name the field and what is accepted.
"""

from __future__ import annotations

from enum import Enum


class Kind(Enum):
    """Why a request was refused: each kind has one HTTP status and one gRPC code name."""

    INVALID = (400, "INVALID_ARGUMENT")  # malformed or not what the model takes
    NOT_FOUND = (404, "NOT_FOUND")  # unknown model or version
    TOO_LARGE = (413, "RESOURCE_EXHAUSTED")  # over the configured payload limit
    UNSUPPORTED = (415, "INVALID_ARGUMENT")  # a Content-Encoding we do not decode
    READ_ONLY = (403, "PERMISSION_DENIED")  # model repository changes (load/unload)
    UNAVAILABLE = (503, "UNAVAILABLE")  # model not ready yet (or never will be)
    # a mirrored request (shadow.py) sent back to the version that mirrored it: the gateway's
    # shadow rule points at stable, shadowing is off; answered at once, not counted
    SHADOW_LOOP = (409, "FAILED_PRECONDITION")
    INTERNAL = (500, "INTERNAL")  # a fault of ours or of the model, never of the input

    @property
    def http_status(self) -> int:
        return self.value[0]

    @property
    def grpc_code(self) -> str:
        return self.value[1]


class InferenceError(Exception):
    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def invalid(message: str) -> InferenceError:
    return InferenceError(Kind.INVALID, message)
