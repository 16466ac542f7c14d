"""The three images, built once per machine (cached by content), and a helper that runs a
container of a pod spec the way a kubelet would and always removes it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelrail.images import podman
from modelrail.images.build import BuiltImage, build_image, build_inference
from modelrail.images.podspec import container_run
from modelrail.images.run import PodContainer, termination_workdir
from modelrail.infra.config import StackConfig, load_stack
from modelrail.serving.config import parse_model_ref
from tests.conftest import Example

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("iris:1", "iris:2", "iris:3")  # what `env up --runtime container` builds too


@pytest.fixture(scope="session")
def images(examples: dict[str, Example]) -> dict[str, BuiltImage]:
    if not podman.available():
        pytest.fail("podman and runc are needed (make install installs them)")
    return {"inference": build_inference([parse_model_ref(m) for m in MODELS]),
            "controller": build_image("controller"), "loadtest": build_image("loadtest")}


@pytest.fixture(scope="session")
def dev() -> StackConfig:
    return load_stack("dev", ROOT)


@contextlib.contextmanager
def pod(spec: dict[str, Any], *, image: str, name: str,
        extra_env: dict[str, str] | None = None) -> Iterator[PodContainer]:
    """One container of `spec` (a pod template's spec) from `image`; removed however the
    test ends."""
    work, log = termination_workdir()
    run = container_run(spec, name=name, network=podman.NETWORK, image=image,
                        termination_log=str(log), extra_env=extra_env)
    try:
        container = PodContainer.start(run, workdir=work)
    except BaseException:
        podman.remove_container(name)
        raise
    try:
        yield container
    finally:
        container.stop(grace=10)
