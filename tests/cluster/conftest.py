"""One real cluster for the whole session (it takes ~25 s to start): `cluster` brings it
up on first use, with NODES nodes. The test that stops it itself and checks that nothing
is left (marked
`cluster_down`) runs right after the last test that uses it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelrail.cluster import config as c
from modelrail.cluster import netns, node

# every node reports this machine's 2 CPUs: the prod stack's stable Deployments ask for
# 2 models × 3 replicas × 1 CPU, beside the controller, CoreDNS, Traefik, Prometheus and
# metrics-server; on 4 nodes a 1-CPU pod stayed Pending when the add-ons spread over two
# nodes (seen once), so 5 leave room whatever the scheduler does
NODES = 5


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster_down: stops the shared cluster; runs after every other test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The test that stops the cluster runs right after the last test that uses it: the
    rest of the session does not share the machine with a running control plane."""
    last = [item for item in items if item.get_closest_marker("cluster_down")]
    if not last:
        return
    rest = [item for item in items if item not in last]
    users = [i for i, item in enumerate(rest) if "cluster" in getattr(item, "fixturenames", ())]
    at = users[-1] + 1 if users else len(rest)
    items[:] = rest[:at] + last + rest[at:]


def base_image() -> str:
    from modelrail.images import base, podman

    ref = base.base_ref()
    if not podman.available() or not podman.image_exists(ref):
        pytest.skip(f"the base image {ref} is not in podman's store (modelrail image base)")
    return ref


def skip_unless_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("the cluster needs root")
    missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager",
                           "kube-scheduler", "kubelet", "kube-proxy")
               if not (c.upstream_bin() / b).is_file()]
    if missing:
        pytest.skip(f"not built: {', '.join(missing)} (scripts/upstream/build.sh)")


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any, str]]:
    """(state folder, what `up` returned, the base image's ref): the session's cluster,
    up in a fresh state folder with the base image imported."""
    skip_unless_possible()
    image = base_image()
    if netns.exists():
        pytest.skip(f"{c.NETNS} exists: another cluster runs on this machine "
                    f"({netns.owner()})")
    state_dir = tmp_path_factory.mktemp("c")  # short: sockets live under it
    try:
        result = node.up(state_dir, nodes=NODES, images_to_import=[image])
        yield state_dir, result, image
    finally:
        if netns.owner() == str(state_dir.resolve()) or state_dir.exists():
            node.down(state_dir)
