"""The base image of every modelrail image: Debian bookworm from Debian's packages.

`debootstrap --variant=minbase` with Python 3.11 and the few libraries onnxruntime and
grpcio load (libstdc++, libgomp), nothing else: no package caches, no apt lists, no
documentation. The root filesystem is packed with sorted names, numeric owners and mtime
0, and imported as one layer. The image is named by a hash of its recipe
(`localhost/modelrail/base:bookworm-<hash>`), so a machine builds it once; the installed
packages and their versions are recorded in the image (`/usr/share/modelrail/packages.txt`)
and in its `modelrail.packages` label's file beside the cache.

Debootstrap reads Debian's archive (a registry these machines reach, like PyPI for the
wheels); nothing after it touches the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from modelrail.images import podman
from modelrail.images.podman import ContainerError

SUITE = "bookworm"
PACKAGES = ("python3.11", "python3-venv", "ca-certificates", "libstdc++6", "libgomp1")
TRIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/info", "usr/share/locale", "usr/share/lintian", "var/log")
PACKAGES_FILE = "usr/share/modelrail/packages.txt"
RECIPE_VERSION = "1"  # bump when the steps below change what lands in the image
DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class BaseImage:
    ref: str
    image_id: str
    packages: tuple[str, ...]
    built: bool  # False: found in the local image store
    seconds: float


def cache_root() -> Path:
    root = os.environ.get("MODELRAIL_CACHE") or str(Path.home() / ".cache" / "modelrail")
    return Path(root).expanduser()


def recipe_hash() -> str:
    text = "\n".join([RECIPE_VERSION, SUITE, "minbase", *PACKAGES, *TRIM])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def base_ref() -> str:
    return f"localhost/modelrail/base:{SUITE}-{recipe_hash()}"


def mirror() -> str:
    """The Debian mirror apt already uses (sources), unless MODELRAIL_DEBIAN_MIRROR says."""
    if os.environ.get("MODELRAIL_DEBIAN_MIRROR"):
        return os.environ["MODELRAIL_DEBIAN_MIRROR"]
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return DEFAULT_MIRROR


def ensure_base(*, ref: str | None = None, force: bool = False) -> BaseImage:
    """The base image, built only if the local store lacks it (or `force`; `ref` names it
    elsewhere, e.g. to time a cold build beside the cached one)."""
    default = ref is None
    ref = ref or base_ref()
    start = time.monotonic()
    if not force and podman.image_exists(ref):
        pkgs = _packages_file().read_text().split() if _packages_file().is_file() else []
        return BaseImage(ref, podman.image_id(ref), tuple(pkgs), False,
                         time.monotonic() - start)
    if shutil.which("debootstrap") is None:
        raise ContainerError("debootstrap is not installed", where="PATH",
                             accepted="Debian's debootstrap package (make install)")
    work = cache_root() / "base"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=work) as tmp:
        root = Path(tmp) / "root"
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
             str(root), mirror()], capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise ContainerError(f"debootstrap failed (exit {proc.returncode}):\n"
                                 f"{(proc.stdout + proc.stderr)[-3000:]}",
                                 where=mirror(), accepted="a reachable Debian mirror "
                                 "(MODELRAIL_DEBIAN_MIRROR)")
        packages = _installed(root)
        for rel in TRIM:
            target = root / rel
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir(mode=0o755)
        listing = root / PACKAGES_FILE
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("\n".join(packages) + "\n")
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--sort=name", "--mtime=@0", "--numeric-owner", "--owner=0",
                        "--group=0", "--xattrs", "-C", str(root), "-cf", str(tarball), "."],
                       check=True, timeout=600)
        image_id = podman.import_rootfs(tarball, ref, [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            f"LABEL {podman.OWNER_LABEL}=modelrail",
            f"LABEL org.opencontainers.image.title=modelrail-base-{SUITE}",
            f"LABEL org.opencontainers.image.description=Debian {SUITE} minbase with "
            f"{' '.join(PACKAGES)}",
            f"LABEL modelrail.recipe={recipe_hash()}",
        ])
    if default:
        _packages_file().parent.mkdir(parents=True, exist_ok=True)
        _packages_file().write_text("\n".join(packages) + "\n")
    return BaseImage(ref, image_id, tuple(packages), True, time.monotonic() - start)


def _packages_file() -> Path:
    return cache_root() / "base" / f"{SUITE}-{recipe_hash()}.packages.txt"


def _installed(root: Path) -> list[str]:
    out = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
                          "-f", "${Package}=${Version}\n"],
                         capture_output=True, text=True, check=True, timeout=60)
    return sorted(line for line in out.stdout.splitlines() if line)
