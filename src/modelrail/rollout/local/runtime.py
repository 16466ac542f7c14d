"""How the local platform runs a serving instance: a process (the default, fastest) or a
container of the real inference image, started as the stack's Deployment says.

`ProcessRuntime`: `bentoml serve` on loopback ports (modelrail.processes).
`ContainerRuntime`: the image (built by `modelrail env up --runtime container` with every
registered version of the environment's models) run by podman+runc from the pod spec
`modelrail.infra.manifests.model_deployment` gives for the version — the same user,
read-only root, emptyDirs, limits, env and ports as on a cluster — on the `modelrail`
container network, where Traefik reaches it by its address; its log goes to the
instance's log file. Both start an instance, stop it gracefully, and re-adopt it from the
environment's saved state.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any, Protocol

from modelrail.processes import (
    Adopted,
    free_port,
    home_of,
    instance_id_of,
    server_command,
    spawn,
    stop,
)
from modelrail.serving.config import ModelRef, ServingConfig

RUNTIMES = ("process", "container")


class Started(Protocol):
    """What the platform needs of a running instance (Popen, Adopted or PodContainer)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...


class Runtime(Protocol):
    kind: str

    def start(self, ref: ModelRef, log_path: Path,
              env: dict[str, str] | None = None) -> tuple[str, int, int, Started]:
        """Start an instance of `ref` with `env` added to its environment: (host,
        http_port, grpc_port, handle)."""
        ...

    def stop(self, handle: Started) -> None: ...

    def handle_state(self, handle: Started) -> dict[str, Any]: ...

    def adopt(self, state: dict[str, Any]) -> Started: ...

    def to_state(self) -> dict[str, Any]: ...


class ProcessRuntime:
    kind = "process"

    def __init__(self, *, workers: int, extra_env: dict[str, str]) -> None:
        self.workers = workers
        self.extra_env = extra_env

    def start(self, ref: ModelRef, log_path: Path,
              env: dict[str, str] | None = None) -> tuple[str, int, int, Started]:
        http_port, grpc_port = free_port(), free_port()
        config = ServingConfig(models=(ref,), grpc_port=grpc_port, grpc_host="127.0.0.1",
                               workers=self.workers)
        cmd = server_command(config, http_host="127.0.0.1", http_port=http_port,
                             extra_env={**self.extra_env, **(env or {})})
        return "127.0.0.1", http_port, grpc_port, spawn(cmd, log_path=log_path)

    def stop(self, handle: Started) -> None:
        assert isinstance(handle, subprocess.Popen | Adopted)
        stop(handle)

    def handle_state(self, handle: Started) -> dict[str, Any]:
        assert isinstance(handle, subprocess.Popen | Adopted)
        home = home_of(handle)
        # finds its workers after a restart of the daemon, even if it died
        return {"pid": handle.pid, "home": str(home) if home else None,
                "instance_id": instance_id_of(handle)}

    def adopt(self, state: dict[str, Any]) -> Started:
        home = Path(state["home"]) if state.get("home") else None
        return Adopted(state["pid"], home=home, instance_id=state.get("instance_id"))

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind}


class ContainerRuntime:
    kind = "container"

    def __init__(self, *, image: str, project: Path, stack: str, env_name: str,
                 extra_env: dict[str, str]) -> None:
        from modelrail.infra.config import load_stack

        self.image = image
        self.project = project
        self.stack = stack
        self.env_name = env_name
        self.extra_env = extra_env
        self.config = load_stack(stack, project)

    def _run(self, ref: ModelRef, name: str) -> Any:
        from modelrail.images import podman
        from modelrail.images.podspec import container_run
        from modelrail.infra import manifests
        from modelrail.infra.config import ModelSpec

        model = ModelSpec(name=ref.name, version=ref.version, sha256=ref.sha256)
        spec = manifests.model_deployment(self.config, model)["spec"]["template"]["spec"]
        # the stack's mirror target is the cluster's gateway, which a container here cannot
        # reach: containers run no mirror (a shadow phase needs `--runtime process`)
        for c in spec["containers"]:
            c["env"] = [e for e in c.get("env", []) if e["name"] != "MODELRAIL_SHADOW"]
        return container_run(spec, name=name, network=podman.NETWORK, image=self.image,
                             extra_env=self.extra_env)

    def start(self, ref: ModelRef, log_path: Path,
              env: dict[str, str] | None = None) -> tuple[str, int, int, Started]:
        from modelrail.images.run import PodContainer
        from modelrail.infra import manifests

        name = f"mr-{self.env_name}-{ref.name}-{ref.version}-{uuid.uuid4().hex[:6]}"
        container = PodContainer.start(self._run(ref, name), extra_args=(
            "--log-driver", "k8s-file", "--log-opt", f"path={log_path}"))
        return (container.ip or "0.0.0.0", manifests.HTTP_PORT, manifests.GRPC_PORT,
                container)

    def stop(self, handle: Started) -> None:
        from modelrail.images.run import PodContainer

        assert isinstance(handle, PodContainer)
        handle.stop()

    def handle_state(self, handle: Started) -> dict[str, Any]:
        from modelrail.images.run import PodContainer

        assert isinstance(handle, PodContainer)
        return {"pid": handle.pid, "container": handle.name,
                "ref": str(handle.run.env.get("MODELRAIL_MODELS", ""))}

    def adopt(self, state: dict[str, Any]) -> Started:
        from modelrail.images.run import PodContainer
        from modelrail.serving.config import parse_model_ref

        return PodContainer.adopt(self._run(parse_model_ref(state["ref"]), state["container"]))

    def to_state(self) -> dict[str, Any]:
        return {"kind": self.kind, "image": self.image, "project": str(self.project),
                "stack": self.stack, "env_name": self.env_name}


def runtime_from_state(state: dict[str, Any] | None, *, workers: int,
                       extra_env: dict[str, str]) -> Runtime:
    if not state or state.get("kind", "process") == "process":
        return ProcessRuntime(workers=workers, extra_env=extra_env)
    return ContainerRuntime(image=state["image"], project=Path(state["project"]),
                            stack=state["stack"], env_name=state["env_name"],
                            extra_env=extra_env)
