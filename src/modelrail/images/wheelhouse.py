"""The Python packages of an image, fetched on the host so that the build needs no network.

`pip wheel --require-hashes --no-deps -r services/<image>/requirements.txt`: every archive
pip downloads is checked against the sha256 hashes `scripts/lock.sh` wrote (a mismatch
fails the build, naming the package), and the rare source-only package is built into a
wheel here. The wheelhouse is cached by the requirements file's hash, outside the checkout,
so a machine downloads each set once. The build installs from it with `--no-index`.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

from modelrail.images.base import cache_root
from modelrail.images.podman import ContainerError

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)==([^\s;\\]+)")


def pins(requirements: Path) -> list[str]:
    """`name==version` of every requirement (hash lines and comments dropped): what the
    image installs from the wheelhouse, with --no-deps."""
    out = []
    for line in requirements.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            out.append(f"{match.group(1)}=={match.group(2)}")
    if not out:
        raise ContainerError("no pinned requirement (NAME==VERSION) found",
                             where=str(requirements), accepted="a file from scripts/lock.sh")
    return out


def ensure_wheelhouse(requirements: Path) -> Path:
    """A folder of wheels for exactly `requirements` (hash-checked downloads)."""
    text = requirements.read_bytes()
    if b"--hash=sha256:" not in text:
        raise ContainerError("the requirements carry no hashes; the wheelhouse checks every "
                             "download against them", where=str(requirements),
                             accepted="a file written by scripts/lock.sh (--generate-hashes)")
    key = hashlib.sha256(text).hexdigest()[:16]
    house = cache_root() / "wheelhouse" / key
    stamp = house / ".complete"
    if stamp.is_file():
        return house
    partial = house.with_name(key + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--require-hashes", "--no-deps", "-r", str(requirements), "-w", str(partial)],
        capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise ContainerError(f"fetching the wheels failed (exit {proc.returncode}):\n"
                             f"{(proc.stdout + proc.stderr)[-3000:]}", where=str(requirements))
    (partial / "requirements.txt").write_text("\n".join(pins(requirements)) + "\n")
    (partial / ".complete").write_text(key + "\n")
    shutil.rmtree(house, ignore_errors=True)
    partial.rename(house)
    return house
