"""Packaging: a Bento (and its Dockerfile) for exact, sha256-pinned model versions.

`modelrail bento build NAME:VERSION …` calls `build_bento`, which works offline:
  1. loads each model from BentoML's store, re-hashing it against its card;
  2. builds the modelrail wheel from this checkout (no build isolation: nothing fetched);
  3. writes a build context: service.py, Dockerfile.template, the image's pinned
     requirements (services/inference/requirements.txt) and a bentofile.yaml listing the
     exact model tags, with MODELRAIL_MODELS pinning each to its sha256;
  4. runs `bentoml build` with package locking off (the requirements are already locked)
     and installs with --no-deps, so the image gets exactly those versions.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from modelrail import __version__
from modelrail.errors import ModelrailError
from modelrail.exit_codes import ExitCode
from modelrail.models import bento_store
from modelrail.processes import find_service_dir
from modelrail.serving.config import ModelRef

BENTO_NAME = "modelrail-inference"
HTTP_PORT = 3000
GRPC_PORT = 8001


class BuildError(ModelrailError):
    """`bentoml build` or the wheel build failed; the message carries their output."""

    exit_code = ExitCode.PACKAGING


@dataclass(frozen=True)
class BuiltBento:
    tag: str
    path: Path
    models: tuple[ModelRef, ...]


def pin(refs: list[ModelRef]) -> tuple[ModelRef, ...]:
    """Each ref with its verified sha256 (a given sha256 must match the stored model)."""
    pinned = []
    for ref in refs:
        card, _ = bento_store.load(ref.tag)  # re-hashes the stored file
        if ref.sha256 and ref.sha256 != card.sha256:
            raise ModelrailError(f"{ref.tag} is pinned to {ref.sha256} but the stored model "
                                 f"has {card.sha256}", where="model reference",
                                 accepted="the registered sha256")
        pinned.append(ModelRef(name=ref.name, version=ref.version, sha256=card.sha256))
    return tuple(pinned)


def bento_version(models: tuple[ModelRef, ...]) -> str:
    """Deterministic: the same models and modelrail version give the same Bento version."""
    digest = hashlib.sha256(",".join(str(m) for m in models).encode()).hexdigest()[:10]
    return f"{__version__.replace('+', '-')}-{digest}"


def bentofile(models: tuple[ModelRef, ...], wheel_name: str) -> dict[str, object]:
    return {
        "service": "service:InferenceService",
        "name": BENTO_NAME,
        "description": "modelrail OIP v2 inference service (REST :3000, gRPC :8001)",
        "labels": {"modelrail.models": "_".join(f"{m.name}-{m.version}" for m in models)},
        "include": ["service.py"],
        "models": [m.tag for m in models],
        "envs": [{"name": "MODELRAIL_MODELS", "value": ",".join(str(m) for m in models)},
                 {"name": "MODELRAIL_GRPC_PORT", "value": str(GRPC_PORT)},
                 {"name": "BENTOML_DO_NOT_TRACK", "value": "true"},
                 {"name": "ORT_DISABLE_TELEMETRY", "value": "1"}],
        "python": {"requirements_txt": "requirements.txt", "lock_packages": False,
                   "pip_args": "--no-deps", "wheels": [f"wheels/{wheel_name}"]},
        "docker": {"python_version": "3.11", "dockerfile_template": "Dockerfile.template"},
    }


def project_root() -> Path:
    root = find_service_dir().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise BuildError("cannot find the modelrail checkout to build its wheel",
                         where=str(root), accepted="run from a modelrail checkout")
    return root


def build_bento(refs: list[ModelRef], *, keep_context: Path | None = None) -> BuiltBento:
    models = pin(refs)
    root = project_root()
    service_dir = find_service_dir()
    with tempfile.TemporaryDirectory(prefix="modelrail-bento-") as tmp:
        ctx = keep_context or Path(tmp) / "ctx"
        ctx.mkdir(parents=True, exist_ok=True)
        wheels = ctx / "wheels"
        wheels.mkdir(exist_ok=True)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "--no-index", "-q", "-w", str(wheels), str(root)], "building the modelrail wheel",
             cwd=Path(tmp))
        wheel = next(wheels.glob("modelrail-*.whl")).name
        for name in ("service.py", "Dockerfile.template", "requirements.txt"):
            shutil.copy2(service_dir / name, ctx / name)
        (ctx / "bentofile.yaml").write_text(yaml.safe_dump(bentofile(models, wheel),
                                                           sort_keys=False))
        # the version names the models, not the source: a rebuild replaces the old Bento
        _run([sys.executable, "-m", "bentoml", "delete", "--yes",
              f"{BENTO_NAME}:{bento_version(models)}"], "bentoml delete", cwd=ctx,
             check=False)
        out = _run([sys.executable, "-m", "bentoml", "build", str(ctx), "--version",
                    bento_version(models), "--output", "tag"], "bentoml build", cwd=ctx,
                   # bentoml imports service.py, which reads its models from the environment
                   extra_env={"MODELRAIL_MODELS": ",".join(str(m) for m in models)})
        match = re.search(r"__tag__:(\S+)", out)
        if not match:
            raise BuildError(f"bentoml build printed no tag:\n{out[-2000:]}")
        tag = match.group(1)
    import bentoml

    return BuiltBento(tag=tag, path=Path(bentoml.get(tag).path), models=models)


def _run(argv: list[str], what: str, *, cwd: Path,
         extra_env: dict[str, str] | None = None, check: bool = True) -> str:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "ORT_DISABLE_TELEMETRY": "1",
           "PIP_NO_INDEX": "1", **(extra_env or {})}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False,
                          timeout=600)
    if check and proc.returncode != 0:
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr
