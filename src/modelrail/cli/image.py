"""`modelrail image base|build|list|containerfile|prune`: container images without Docker.

    modelrail image build inference iris:1 iris:2     Bento of exact versions → image
    modelrail image build controller                  the kopf operator
    modelrail image build loadtest                    the Locust Job
    modelrail image build … --tag registry.example.com/modelrail/inference:0.1.0
    modelrail image build … --output json             ref, digest, labels, SBOM path for CI

Built with podman+runc and no network (modelrail.images); a second build of the same
content finds the image and rebuilds nothing.
"""

from __future__ import annotations

import argparse
from typing import Any

from modelrail.cli.output import add_output_flag, print_json, table
from modelrail.errors import InvalidInputError

KINDS = ("inference", "controller", "loadtest")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("image", help="build and list the container images (podman, offline)")
    isub = p.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    b = isub.add_parser("build", help="build an image (cached by content)")
    b.add_argument("kind", choices=KINDS)
    b.add_argument("models", nargs="*", metavar="NAME:VERSION[@sha256:HEX]",
                   help="inference only: the exact model versions the image carries")
    b.add_argument("--tag", action="append", default=[],
                   help="also name the image so (e.g. the stack's image reference); repeatable")
    b.add_argument("--force", action="store_true", help="build even if the content exists")
    add_output_flag(b)
    b.set_defaults(handler=_build)
    base = isub.add_parser("base", help="build (or find) the Debian base image")
    add_output_flag(base)
    base.set_defaults(handler=_base)
    ls = isub.add_parser("list", help="the images modelrail built on this machine")
    add_output_flag(ls)
    ls.set_defaults(handler=_list)
    cf = isub.add_parser("containerfile", help="print the Containerfile of an image")
    cf.add_argument("kind", choices=KINDS)
    cf.add_argument("models", nargs="*", metavar="NAME:VERSION[@sha256:HEX]")
    cf.set_defaults(handler=_containerfile)
    pr = isub.add_parser("prune", help="remove modelrail's containers and images")
    pr.add_argument("--keep-base", action="store_true")
    pr.set_defaults(handler=_prune)


def _refs(args: argparse.Namespace) -> list[Any]:
    from modelrail.serving.config import parse_model_ref

    if args.kind == "inference" and not args.models:
        raise InvalidInputError("the inference image needs the model versions it carries",
                                where="modelrail image build inference",
                                accepted="NAME:VERSION[@sha256:HEX] …, e.g. iris:1 iris:2")
    if args.kind != "inference" and args.models:
        raise InvalidInputError(f"the {args.kind} image carries no models",
                                where=" ".join(args.models), accepted="no model arguments")
    return [parse_model_ref(m) for m in args.models]


def _build(args: argparse.Namespace) -> int:
    from modelrail.images.build import build_image, build_inference

    refs = _refs(args)
    tags = tuple(args.tag)
    built = (build_inference(refs, tags=tags, force=args.force) if args.kind == "inference"
             else build_image(args.kind, tags=tags, force=args.force))
    if args.output == "json":
        print_json(built.to_json())
        return 0
    verb = "built" if built.built else "cached"
    print(f"{verb} {built.ref}  ({built.size_bytes / 2**20:.0f} MiB, {built.seconds:.1f}s)")
    print(f"  digest   {built.digest}")
    for t in built.tags:
        print(f"  tag      {t}")
    for m in built.models:
        print(f"  model    {m}")
    print(f"  revision {built.labels.get('org.opencontainers.image.revision', '?')}")
    print(f"  sbom     {built.sbom}")
    return 0


def _base(args: argparse.Namespace) -> int:
    from modelrail.images.base import ensure_base

    base = ensure_base()
    if args.output == "json":
        print_json({"ref": base.ref, "image_id": base.image_id, "built": base.built,
                    "packages": list(base.packages), "seconds": round(base.seconds, 1)})
    else:
        print(f"{'built' if base.built else 'cached'} {base.ref} "
              f"({len(base.packages)} Debian packages, {base.seconds:.1f}s)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from modelrail.images import podman

    rows = []
    for img in podman.images():
        labels = img.get("Labels") or {}
        for name in img.get("Names") or ["<none>"]:
            rows.append({"name": name, "id": str(img.get("Id", ""))[:12],
                         "size_mib": round(int(img.get("Size", 0)) / 2**20),
                         "models": labels.get("modelrail.models", ""),
                         "revision": labels.get("org.opencontainers.image.revision", "")})
    if args.output == "json":
        print_json(rows)
    else:
        print(table(["IMAGE", "ID", "MiB", "REVISION"],
                    [[r["name"], r["id"], str(r["size_mib"]), r["revision"][:12]]
                     for r in rows]))
    return 0


def _containerfile(args: argparse.Namespace) -> int:
    from modelrail.images.base import base_ref
    from modelrail.images.build import containerfile
    from modelrail.serving.packaging import pin

    refs = tuple(pin(_refs(args))) if args.models else ()
    print(containerfile(args.kind, base=base_ref(), models=refs), end="")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from modelrail.images import podman
    from modelrail.images.base import base_ref

    for c in podman.containers():
        podman.remove_container(str(c["Id"]))
    removed = 0
    for img in podman.images():
        names = img.get("Names") or []
        if args.keep_base and base_ref() in names:
            continue
        podman.remove_image(str(img["Id"]))
        removed += 1
    print(f"removed {removed} images")
    return 0
