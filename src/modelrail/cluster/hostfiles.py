"""Files the node's components write outside the state folder, whatever they are told,
found and removed by `down`.

Measured with kubelet 1.34 and containerd 1.6.20 (every other path is configured under
the state folder):
- /var/log/containers/*.log: the kubelet's symlinks to container logs (a fixed path; its
  `podLogsDir` moves only their targets);
- /var/lib/kubelet/device-plugins/kubelet.sock: the device-plugin registration socket
  (a fixed path, whatever `--root-dir` says);
- /var/lib/cni/results/<network>-<sandbox>-<if>: libcni's result cache (containerd 1.6
  does not expose its cache folder), written on every pod's network setup and removed only
  by a CNI DEL, which `down` does not wait for.
Only entries that point into this state folder or name this cluster's CNI network (and
the loopback entries of the same sandboxes) are removed; a folder is removed only if that
leaves it empty.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from modelrail.processes import pid_alive

LOG_LINKS = Path("/var/log/containers")
KUBELET_DIR = Path("/var/lib/kubelet")
DEVICE_PLUGIN_SOCKET = KUBELET_DIR / "device-plugins" / "kubelet.sock"
CNI_DIR = Path("/var/lib/cni")
CNI_RESULTS = CNI_DIR / "results"
CNI_NETWORK = "modelrail"  # the conflist's name (components.cni_conflist)


def _log_links(state_dir: Path) -> list[Path]:
    found = []
    with contextlib.suppress(OSError):
        for link in LOG_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and Path(os.readlink(link)).is_relative_to(state_dir):
                    found.append(link)
    return found


def _cni_results() -> list[Path]:
    """Cache entries of our network, and the loopback entries of the same sandboxes."""
    ours: list[Path] = []
    sandboxes: set[str] = set()
    with contextlib.suppress(OSError):
        for entry in CNI_RESULTS.glob(f"{CNI_NETWORK}-*"):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(entry.read_text())
                if data.get("networkName") == CNI_NETWORK:
                    ours.append(entry)
                    sandboxes.add(str(data.get("containerId", "")))
        for sandbox in filter(None, sandboxes):
            ours += CNI_RESULTS.glob(f"cni-loopback-{sandbox}-*")
    return ours


def _kubelet_running() -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "kubelet" and \
                        pid_alive(int(entry.name)):  # a zombie is not running
                    return True
    return False


def found(state_dir: Path) -> list[Path]:
    """What of ours is there now (the device-plugin socket counts only while no kubelet
    runs on the machine: then it is a leftover)."""
    paths = _log_links(state_dir) + _cni_results()
    if DEVICE_PLUGIN_SOCKET.exists() and not _kubelet_running():
        paths.append(DEVICE_PLUGIN_SOCKET)
    return sorted(paths)


def remove(state_dir: Path) -> list[str]:
    """Remove them, and the folders they leave empty; what could not be removed."""
    problems = []
    for path in found(state_dir):
        try:
            path.unlink()
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror}")
    for folder in (LOG_LINKS, DEVICE_PLUGIN_SOCKET.parent, KUBELET_DIR, CNI_RESULTS, CNI_DIR):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
    return problems

