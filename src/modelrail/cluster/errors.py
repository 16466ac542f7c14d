"""The cluster's one error family: a step of `up`, `status` or `down` failed, with what
the component said (the tail of its log) and where its log is."""

from __future__ import annotations

from modelrail.errors import ModelrailError


class ClusterError(ModelrailError):
    """The local cluster could not be started, inspected or stopped."""
