"""The container runtime adapter: the only module that runs `podman`.

Podman (Debian's 4.3) with Debian's `runc` as its OCI runtime: podman's default `crun`
cannot run on these machines' hybrid cgroups, and the sandbox lacks CAP_SYS_RESOURCE, so
every build and run passes rlimits at or below the hard limits (DESIGN.md, *Containers
here*). Containers join one podman network, `modelrail`, created `--internal`: they get
addresses on a host bridge (like pod IPs), the host reaches them there, and they cannot
reach anything beyond it. Every container and image of ours carries the label
`modelrail.owner` so that a test, or `modelrail image prune`, finds what is left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrail.errors import ModelrailError
from modelrail.exit_codes import ExitCode

NETWORK = "modelrail"
NETWORK_SUBNET = os.environ.get("MODELRAIL_CONTAINER_SUBNET", "10.213.0.0/24")
OWNER_LABEL = "modelrail.owner"
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096")
# extra labels on every container started here, "key=value,…" (a test session marks its
# containers so that it can prove none outlives it)
LABELS_ENV = "MODELRAIL_CONTAINER_LABELS"


def owner_labels() -> dict[str, str]:
    labels = {OWNER_LABEL: "modelrail"}
    for item in filter(None, os.environ.get(LABELS_ENV, "").split(",")):
        key, _, value = item.partition("=")
        labels[key.strip()] = value.strip()
    return labels


def label_args() -> list[str]:
    return [arg for k, v in sorted(owner_labels().items()) for arg in ("--label", f"{k}={v}")]


class ContainerError(ModelrailError):
    """podman or runc failed, or is missing; the message carries podman's own words."""

    exit_code = ExitCode.CONTAINER


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def runc_path() -> str:
    path = os.environ.get("MODELRAIL_RUNC") or shutil.which("runc")
    if not path:
        raise ContainerError("runc is not installed", where="PATH",
                             accepted="Debian's runc package (the bootstrap installs it: "
                                      "make install)")
    return path


def available() -> bool:
    """podman and runc are installed (nothing is started)."""
    return shutil.which("podman") is not None and (
        bool(os.environ.get("MODELRAIL_RUNC")) or shutil.which("runc") is not None)


def podman(*args: str, check: bool = True, timeout: float = 600.0,
           stdin: bytes | None = None, what: str | None = None) -> Result:
    """`podman --runtime runc ARGS…`; raises ContainerError (podman's stderr included)
    unless `check` is False."""
    if shutil.which("podman") is None:
        raise ContainerError("podman is not installed", where="PATH",
                             accepted="Debian's podman package (the bootstrap installs it: "
                                      "make install)")
    argv = ["podman", "--runtime", runc_path(), *args]
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise ContainerError(f"{what or ' '.join(args[:2])} did not finish within "
                             f"{timeout:.0f}s", where=" ".join(argv[:6])) from exc
    out = Result(proc.returncode, proc.stdout.decode(errors="replace"),
                 proc.stderr.decode(errors="replace"))
    if check and out.returncode != 0:
        raise ContainerError(f"{what or 'podman ' + args[0]} failed (exit {out.returncode}):"
                             f"\n{(out.stderr or out.stdout)[-3000:]}")
    return out


def command(*args: str) -> list[str]:
    """The argv of a podman command, for callers that run it as their own process (a
    container in the foreground, supervised like any instance)."""
    return ["podman", "--runtime", runc_path(), *args]


# --- images --------------------------------------------------------------------------

def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def inspect_image(ref: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(podman("image", "inspect", ref).stdout)
    return data[0]


def image_digest(ref: str) -> str:
    """The image's manifest digest (`sha256:…`), as a registry would name it."""
    return str(inspect_image(ref)["Digest"])


def image_id(ref: str) -> str:
    return str(inspect_image(ref)["Id"])


def import_rootfs(tarball: Path, ref: str, changes: Sequence[str]) -> str:
    """A root filesystem tarball as a one-layer image; `changes` are Containerfile
    instructions (ENV, LABEL, USER…). Returns the image id."""
    args = ["import"]
    for change in changes:
        args += ["--change", change]
    out = podman(*args, str(tarball), ref, what=f"importing {ref}")
    return out.stdout.strip().splitlines()[-1]


def build(context: Path, *, containerfile: Path, tag: str, labels: dict[str, str],
          timestamp: int = 0, timeout: float = 1200.0) -> None:
    """`podman build` with no network at all; layers stamped `timestamp` so the same
    inputs give the same layers. No layer cache: buildah keys a cached RUN step by its
    text, not by the files a `--mount=type=bind` brings in (the wheels), so a cached step
    could hold another image's packages; whole images are cached by content instead."""
    args = ["build", "--no-cache", "--network", "none", "--pull=never", *ULIMITS,
            "--timestamp", str(timestamp), "-f", str(containerfile), "-t", tag]
    for key, value in sorted(labels.items()):
        args += ["--label", f"{key}={value}"]
    podman(*args, str(context), timeout=timeout, what=f"building {tag}")


def tag(ref: str, *names: str) -> None:
    podman("tag", ref, *names)


def remove_image(ref: str) -> None:
    podman("rmi", "--force", ref, check=False)


def images(label: str = OWNER_LABEL) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(
        podman("images", "--filter", f"label={label}", "--format", "json").stdout or "[]")
    return data


def save_oci_archive(ref: str, path: Path) -> None:
    podman("save", "--format", "oci-archive", "-o", str(path), ref, what=f"saving {ref}")


def read_file(ref: str, path: str) -> bytes:
    """One file of an image, read by a throwaway container that never starts."""
    cid = podman("create", "--network", "none", ref, "true").stdout.strip()
    try:
        out = subprocess.run(["podman", "--runtime", runc_path(), "cp", f"{cid}:{path}", "-"],
                             capture_output=True, check=False, timeout=120)
        if out.returncode != 0:
            raise ContainerError(f"{path} is not in {ref}: {out.stderr.decode()[-500:]}")
        return _untar_one(out.stdout)
    finally:
        podman("rm", "--force", cid, check=False)


def _untar_one(data: bytes) -> bytes:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = next(m for m in tar.getmembers() if m.isfile())
        f = tar.extractfile(member)
        assert f is not None
        return f.read()


# --- containers ------------------------------------------------------------------------

def ensure_network() -> None:
    """The `modelrail` network: an internal bridge, no route beyond this machine."""
    if podman("network", "exists", NETWORK, check=False).returncode == 0:
        return
    out = podman("network", "create", "--internal", "--subnet", NETWORK_SUBNET,
                 "--label", f"{OWNER_LABEL}=modelrail", NETWORK, check=False)
    if out.returncode != 0 and "already exists" not in out.stderr:
        raise ContainerError(f"cannot create the podman network {NETWORK}:\n{out.stderr}")


def container_ip(name: str) -> str | None:
    out = podman("inspect", "--type", "container", name, check=False)
    if out.returncode != 0:
        return None
    nets = json.loads(out.stdout)[0]["NetworkSettings"].get("Networks") or {}
    ip = (nets.get(NETWORK) or {}).get("IPAddress")
    return str(ip) if ip else None


def inspect_container(name: str) -> dict[str, Any] | None:
    out = podman("inspect", "--type", "container", name, check=False)
    if out.returncode != 0:
        return None
    data: list[dict[str, Any]] = json.loads(out.stdout)
    return data[0]


def remove_container(name: str, *, stop_timeout: int = 0) -> None:
    podman("rm", "--force", "--time", str(stop_timeout), name, check=False, timeout=120)


def containers(label: str = OWNER_LABEL, *, all_states: bool = True) -> list[dict[str, Any]]:
    args = ["ps", "--filter", f"label={label}", "--format", "json"]
    if all_states:
        args.insert(1, "--all")
    data: list[dict[str, Any]] = json.loads(podman(*args).stdout or "[]")
    return data
