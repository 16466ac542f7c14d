"""The three images — inference, controller, load test — built offline and cached by content.

Each build:
  1. ensures the base image (base.py) and the image's wheelhouse (wheelhouse.py, hashes
     checked against services/<image>/requirements.txt);
  2. builds the modelrail wheel from this checkout and assembles a build context: the
     wheels, the image's files and, for the inference image, the Bento with each model
     version copied from BentoML's store and re-hashed against its card;
  3. names the image by a hash of everything in that context, the Containerfile and the
     base (`localhost/modelrail/<image>:c-<hash>`): if the local store has that name, the
     build is skipped — a second `make test` rebuilds nothing;
  4. otherwise runs `podman build --network none` on a Containerfile rendered here (not
     BentoML's, which installs from the network and starts from a registry image), with
     OCI labels (source revision, exact model tags and sha256s) and a CycloneDX SBOM
     written inside the image by `modelrail.images.sbom`.

The user, the ports and the writable paths come from the Deployment builders in
modelrail.infra.manifests, the same definitions the Pulumi program deploys.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrail import __version__
from modelrail.images import podman
from modelrail.images.base import cache_root, ensure_base
from modelrail.images.podman import ContainerError
from modelrail.images.wheelhouse import ensure_wheelhouse
from modelrail.infra import manifests
from modelrail.serving.config import ModelRef

KINDS = ("inference", "controller", "loadtest")
REPO = "localhost/modelrail"
SBOM_PATH = "/usr/share/modelrail/sbom.cdx.json"
APP = "/app"
BENTO_PATH = "/home/bentoml/bento"
BENTOML_DIRS = tuple(f"/home/bentoml/{d}" for d in ("bentos", "models", "envs", "tmp"))
MODELS_LABEL = "modelrail.models"
CONTENT_LABEL = "modelrail.content"
KIND_LABEL = "modelrail.image"
DESCRIPTIONS = {
    "inference": "modelrail OIP v2 inference server (BentoML + onnxruntime; REST :3000, "
                 "gRPC :8001)",
    "controller": "modelrail rollout controller (kopf operator)",
    "loadtest": "modelrail Locust load test (one bounded run; summary as termination message)",
}


@dataclass(frozen=True)
class BuiltImage:
    kind: str
    ref: str  # localhost/modelrail/<kind>:c-<content hash>
    image_id: str
    digest: str
    content: str
    models: tuple[ModelRef, ...]
    labels: dict[str, str]
    sbom: Path
    built: bool  # False: the store already had this content
    seconds: float
    size_bytes: int
    tags: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ref": self.ref, "tags": list(self.tags),
                "image_id": self.image_id, "digest": self.digest, "content": self.content,
                "models": [str(m) for m in self.models], "sbom": str(self.sbom),
                "built": self.built, "seconds": round(self.seconds, 1),
                "size_bytes": self.size_bytes, "labels": self.labels}


# --- what goes into each image ------------------------------------------------------

def _writable_paths(container: dict[str, Any]) -> list[str]:
    return [m["mountPath"] for m in container.get("volumeMounts", [])]


def _inference_container() -> dict[str, Any]:
    from modelrail.infra.config import load_stack

    cfg = load_stack("dev", project_root())
    dep = manifests.model_deployment(cfg, cfg.models[0])
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def _common_head(base: str, extra_env: dict[str, str]) -> str:
    env = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONUNBUFFERED": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "VIRTUAL_ENV": f"{APP}/.venv",
           "PATH": f"{APP}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                   "/sbin:/bin",
           "ORT_DISABLE_TELEMETRY": "1", "BENTOML_DO_NOT_TRACK": "true", **extra_env}
    uid = manifests.RUN_AS
    lines = [
        f"FROM {base}",
        "ENV " + " \\\n    ".join(f'{k}="{v}"' for k, v in env.items()),
        # one numeric, non-root user: Kubernetes checks runAsNonRoot from the image alone
        f'RUN echo "modelrail:x:{uid}:{uid}:modelrail:/nonexistent:/usr/sbin/nologin" '
        f'>> /etc/passwd && echo "modelrail:x:{uid}:" >> /etc/group',
        # packages from the wheelhouse only; pip leaves the image afterwards
        "RUN --mount=type=bind,source=wheels,target=/wheels \\\n"
        f"    python3.11 -m venv {APP}/.venv \\\n"
        f" && {APP}/.venv/bin/pip install --quiet --no-index --no-deps --no-cache-dir "
        "--disable-pip-version-check --find-links /wheels -r /wheels/requirements.txt \\\n"
        f" && {APP}/.venv/bin/pip install --quiet --no-index --no-deps --no-cache-dir "
        "--disable-pip-version-check /wheels/modelrail-*.whl \\\n"
        f" && {APP}/.venv/bin/pip uninstall --quiet --yes pip \\\n"
        " && rm -rf /root/.cache",
    ]
    return "\n".join(lines)


def containerfile(kind: str, *, base: str, models: tuple[ModelRef, ...] = ()) -> str:
    """The Containerfile of `kind` (printed by `modelrail image containerfile`)."""
    uid = manifests.RUN_AS
    sbom = (f"python -m modelrail.images.sbom --name modelrail-{kind} --version {__version__}"
            f" --out {SBOM_PATH}")
    if kind == "inference":
        container = _inference_container()
        ports = [p["containerPort"] for p in container["ports"]]
        env = {"BENTOML_HOME": "/home/bentoml/", "BENTO_PATH": BENTO_PATH,
               "BENTOML_CONTAINERIZED": "true", "BENTOML_PORT": str(manifests.HTTP_PORT),
               "MODELRAIL_GRPC_PORT": str(manifests.GRPC_PORT),
               "MODELRAIL_MODELS": ",".join(str(m) for m in models)}
        body = [
            f"COPY bento {BENTO_PATH}",
            # BentoML makes its home's folders at start: present (empty) on a read-only
            # root. The Deployment's emptyDirs are the only writable places; their mount
            # points are left out of the image (podman gives a tmpfs over an existing
            # folder that folder's owner and mode, a kubelet does not)
            f"RUN mkdir -p {' '.join(BENTOML_DIRS)} && {sbom} --models {BENTO_PATH}/models"
            f" && rm -rf {' '.join(p for p in _writable_paths(container) if p != '/tmp')}",
            f"USER {uid}:{uid}",
            f"WORKDIR {BENTO_PATH}",
            "EXPOSE " + " ".join(str(p) for p in ports),
            "STOPSIGNAL SIGTERM",
            f'ENTRYPOINT ["bentoml", "serve", "{BENTO_PATH}"]',
        ]
        return _common_head(base, env) + "\n" + "\n".join(body) + "\n"
    if kind in ("controller", "loadtest"):
        body = [
            f"COPY app {APP}",
            f"RUN mkdir -p /tmp && {sbom}",
            f"USER {uid}:{uid}",
            f"WORKDIR {APP}",
            "STOPSIGNAL SIGTERM",
            # the Deployment or Job gives the command (manifests.controller_deployment,
            # manifests.load_job)
            'ENTRYPOINT []',
            'CMD ["python", "-c", "import modelrail; print(modelrail.__version__)"]',
        ]
        # Locust and kopf write small state files under $HOME: the pod's /tmp emptyDir
        return _common_head(base, {"HOME": "/tmp", "MODELRAIL_PROJECT": APP}) + "\n" \
            + "\n".join(body) + "\n"
    raise ContainerError(f"unknown image {kind!r}", where="image", accepted=", ".join(KINDS))


# --- context --------------------------------------------------------------------------

def project_root() -> Path:
    from modelrail.serving.packaging import project_root as root

    return root()


def _modelrail_wheel(dest: Path) -> Path:
    root = project_root()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "-w", str(dest), str(root)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PIP_NO_INDEX": "1", "SOURCE_DATE_EPOCH": "315532800"})
    if proc.returncode != 0:
        raise ContainerError(f"building the modelrail wheel failed:\n{proc.stderr[-2000:]}")
    return next(dest.glob("modelrail-*.whl"))


def _app_files(kind: str, ctx: Path) -> None:
    root = project_root()
    app = ctx / "app"
    service = root / "services" / "inference"
    # find_service_dir() looks under the working directory: service.py marks the folder,
    # the locustfiles are what the load runs
    (app / "services" / "inference").mkdir(parents=True)
    shutil.copy2(service / "service.py", app / "services" / "inference" / "service.py")
    shutil.copytree(service / "loadtest", app / "services" / "inference" / "loadtest",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if kind == "controller":  # the operator reads Pulumi.<stack>.yaml (MODELRAIL_PROJECT)
        for f in sorted(root.glob("Pulumi*.yaml")):
            shutil.copy2(f, app / f.name)


def _bento_files(bento_path: Path, models: tuple[ModelRef, ...], ctx: Path) -> None:
    from modelrail.models import bento_store

    dest = ctx / "bento"
    shutil.copytree(bento_path, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for ref in models:
        card, _ = bento_store.load(ref.tag)  # re-hashes the model file
        if ref.sha256 and card.sha256 != ref.sha256:
            raise ContainerError(f"{ref.tag} in the store has sha256 {card.sha256}, the Bento "
                                 f"pins {ref.sha256}", where="BentoML model store")
        shutil.copytree(bento_store.model_dir(ref.tag), dest / "models" / ref.name / ref.version)


def _normalize_modes(ctx: Path) -> None:
    """Readable by everyone, writable by no one but root: the image's user reads every
    file (BentoML's store keeps model files private to their owner) and changes none."""
    for path in ctx.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
        elif path.is_file():
            path.chmod(0o755 if path.stat().st_mode & 0o100 else 0o644)


def content_hash(ctx: Path, *, base_id: str, text: str) -> str:
    """sha256 over the context's files, the Containerfile and the base image id: paths and
    bytes, except what records when rather than what — modelrail's wheel counts by its
    entries (not their zip timestamps), a bento.yaml without its creation times, and a
    model version by its ONNX bytes only (its card and model.yaml also carry the time and
    commit of registration; the sha256 the image's tags pin is the model)."""
    h = hashlib.sha256(f"{base_id}\n{text}".encode())
    for path in sorted(p for p in ctx.rglob("*") if p.is_file()):
        rel = path.relative_to(ctx).as_posix()
        h.update(rel.encode() + b"\0")
        if rel.startswith("bento/models/") and path.name in ("card.json", "model.yaml"):
            continue
        if path.suffix == ".whl" and path.name.startswith("modelrail-"):
            with zipfile.ZipFile(path) as z:
                for info in sorted(z.infolist(), key=lambda i: i.filename):
                    h.update(info.filename.encode() + hashlib.sha256(z.read(info)).digest())
        elif path.name == "bento.yaml":
            lines = [ln for ln in path.read_text().splitlines()
                     if "creation_time" not in ln]
            h.update("\n".join(lines).encode())
        else:
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def source_revision() -> str:
    root = project_root()
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def build_image(kind: str, *, bento: tuple[Path, tuple[ModelRef, ...]] | None = None,
                tags: tuple[str, ...] = (), force: bool = False) -> BuiltImage:
    """Build (or find) image `kind`. The inference image needs `bento`: the Bento's path
    and its exact, sha256-pinned models."""
    if kind not in KINDS:
        raise ContainerError(f"unknown image {kind!r}", where="image",
                             accepted=", ".join(KINDS))
    if kind == "inference" and bento is None:
        raise ContainerError("the inference image is built from a Bento", where="image build",
                             accepted="modelrail image build inference NAME:VERSION …")
    start = time.monotonic()
    base = ensure_base()
    root = project_root()
    house = ensure_wheelhouse(root / "services" / kind / "requirements.txt")
    models = bento[1] if bento else ()
    work = cache_root() / "contexts"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{kind}-", dir=work) as tmp:
        ctx = Path(tmp)
        wheels = ctx / "wheels"
        wheels.mkdir()
        for whl in house.iterdir():
            if whl.name != ".complete":
                os.link(whl, wheels / whl.name)
        _modelrail_wheel(wheels)
        if bento is not None:
            _bento_files(bento[0], models, ctx)
        else:
            _app_files(kind, ctx)
        _normalize_modes(ctx)
        text = containerfile(kind, base=base.ref, models=models)
        (ctx / "Containerfile").write_text(text)
        content = content_hash(ctx, base_id=base.image_id, text=text)
        ref = f"{REPO}/{kind}:c-{content[:16]}"
        labels = {
            podman.OWNER_LABEL: "modelrail", KIND_LABEL: kind, CONTENT_LABEL: content,
            "org.opencontainers.image.title": f"modelrail-{kind}",
            "org.opencontainers.image.description": DESCRIPTIONS[kind],
            "org.opencontainers.image.version": __version__,
            "org.opencontainers.image.revision": source_revision(),
            "org.opencontainers.image.source": "modelrail",
            "org.opencontainers.image.base.name": base.ref,
            "modelrail.sbom": SBOM_PATH,
        }
        if models:
            labels[MODELS_LABEL] = ",".join(str(m) for m in models)
        built = force or not podman.image_exists(ref)
        if built:
            podman.build(ctx, containerfile=ctx / "Containerfile", tag=ref, labels=labels)
    for extra in tags:
        podman.tag(ref, extra)
    info = podman.inspect_image(ref)
    sbom = cache_root() / "sbom" / f"{kind}-{content[:16]}.cdx.json"
    if built or not sbom.is_file():
        sbom.parent.mkdir(parents=True, exist_ok=True)
        sbom.write_bytes(podman.read_file(ref, SBOM_PATH))
    return BuiltImage(kind=kind, ref=ref, image_id=str(info["Id"]), digest=str(info["Digest"]),
                      content=content, models=models,
                      labels=dict(info.get("Labels") or {}), sbom=sbom, built=built,
                      seconds=time.monotonic() - start, size_bytes=int(info.get("Size", 0)),
                      tags=tags)


def build_inference(refs: list[ModelRef], *, tags: tuple[str, ...] = (),
                    force: bool = False) -> BuiltImage:
    """The Bento of exactly these model versions (`modelrail bento build`), as an image."""
    from modelrail.serving.packaging import build_bento

    bento = build_bento(refs)
    return build_image("inference", bento=(bento.path, bento.models), tags=tags, force=force)
