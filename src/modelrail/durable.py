"""Crash-safe file writes: a file is either its old content or its new content, never torn,
and once a write returns it survives a power cut.

Whole files go through a temporary file in the same folder (write, flush, fsync), are
renamed over the target (`os.replace`, atomic on POSIX) and the folder is fsynced so the
rename itself is on disk. A failure at any point removes the temporary file and leaves the
target as it was. `create_exclusive_bytes` does the same but links instead of renaming, so
it never replaces an existing file (immutable registry entries). Append-only logs write
each record with one O_APPEND write and fsync it. `fsync_tree` makes durable a folder
that another library wrote.

Called for every file modelrail keeps: the rollout state files (rollout/local/store.py), model
cards, blobs and samples (models/registry.py, models/bento_store.py), Traefik's dynamic
route file (rollout/routers/traefik.py) and the HTML report (rollout/local/report.py).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from pathlib import Path
from typing import Any

FILE_MODE = 0o644  # before the umask, like open(..., "w")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` of `text` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any, *, indent: int | None = 2) -> None:
    """`atomic_write_bytes` of `data` as JSON (serialised before anything is written)."""
    atomic_write_text(path, json.dumps(data, indent=indent))


def create_exclusive_bytes(path: Path, data: bytes) -> bool:
    """Create `path` with `data` only if it does not exist yet; False if it already did.
    The file appears complete or not at all (hard link of a fsynced temporary file)."""
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True


def append_line(path: Path, line: bytes) -> None:
    """Append one whole line with a single O_APPEND write, then fsync it. Concurrent
    appenders never interleave within a line; a crash can at most leave a torn last line,
    which readers of the log skip."""
    if not line.endswith(b"\n"):
        line += b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def fsync_tree(folder: Path) -> None:
    """Make a folder another library wrote (e.g. BentoML's copy of a model into its store)
    durable: every file and folder in it, and its entry in its parent."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir() and not path.is_symlink():
            fsync_dir(path)
    fsync_dir(folder)
    fsync_dir(folder.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory: nothing to do
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes) -> Path:
    """A fsynced temporary file beside `path` holding `data`; removed again on failure.
    Its name starts with '.' and ends in '.tmp', so no reader globbing for the real
    file names (*.json, *.yaml) ever sees it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp
