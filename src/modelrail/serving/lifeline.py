"""Ties a serving worker's life to its instance (placeholder; implemented in the hardening
issue): BentoML starts each worker in a session of its own, so a worker must itself notice
that the process that started it has gone."""

from __future__ import annotations


def bind_to_parent() -> None:
    """Make this process end when its parent process ends (however the parent ends)."""
