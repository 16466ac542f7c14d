"""The software bill of materials of an image (CycloneDX 1.5 JSON), written inside it.

Runs as the last step of every image build, inside the image, with only the standard
library: the Debian packages from dpkg's status file, every Python distribution of the
image's environment (with the sha256 of its RECORD), and, in the inference image, every
model file with its sha256 and its registry card's. What is listed is what the image holds,
not what a lock file hoped for.

    python -m modelrail.images.sbom --name NAME --version V [--models DIR] --out FILE
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import sys
import uuid
from pathlib import Path
from typing import Any

DPKG_STATUS = Path("/var/lib/dpkg/status")


def debian_packages(status: Path = DPKG_STATUS) -> list[dict[str, Any]]:
    comps: list[dict[str, Any]] = []
    if not status.is_file():
        return comps
    for block in status.read_text(errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if ": " in line and not line.startswith(" "))
        if "Package" not in fields or "installed" not in fields.get("Status", ""):
            continue
        name, version = fields["Package"], fields.get("Version", "")
        arch = fields.get("Architecture", "")
        comps.append({"type": "library", "name": name, "version": version,
                      "purl": f"pkg:deb/debian/{name}@{version}?arch={arch}&distro=bookworm",
                      "bom-ref": f"deb:{name}"})
    return sorted(comps, key=lambda c: c["name"])


def python_packages() -> list[dict[str, Any]]:
    comps = []
    for dist in md.distributions():
        name = dist.metadata["Name"]
        record = dist.read_text("RECORD") or ""
        comp: dict[str, Any] = {
            "type": "library", "name": name, "version": dist.version,
            "purl": f"pkg:pypi/{name.lower().replace('_', '-')}@{dist.version}",
            "bom-ref": f"pypi:{name.lower()}",
            "hashes": [{"alg": "SHA-256",
                        "content": hashlib.sha256(record.encode()).hexdigest()}]}
        lic = dist.metadata["License-Expression"] or dist.metadata["License"]
        if lic and len(lic) < 100:
            comp["licenses"] = [{"expression": lic}]
        comps.append(comp)
    return sorted(comps, key=lambda c: c["name"].lower())


def models(root: Path) -> list[dict[str, Any]]:
    """Each model version under a BentoML model store: its files' sha256 and the sha256
    its registry card pins (they are equal, or the server refuses to serve it)."""
    comps = []
    for card_path in sorted(root.glob("*/*/card.json")):
        version_dir = card_path.parent
        card = json.loads(card_path.read_text())
        onnx = version_dir / "model.onnx"
        comps.append({
            "type": "machine-learning-model",
            "name": version_dir.parent.name, "version": version_dir.name,
            "bom-ref": f"model:{version_dir.parent.name}:{version_dir.name}",
            "hashes": [{"alg": "SHA-256",
                        "content": hashlib.sha256(onnx.read_bytes()).hexdigest()}],
            "properties": [{"name": "modelrail:card.sha256",
                            "value": str(card.get("sha256", ""))},
                           {"name": "modelrail:card.task", "value": str(card.get("task", ""))}],
        })
    return comps


def bom(name: str, version: str, model_root: Path | None) -> dict[str, Any]:
    components = debian_packages() + python_packages()
    if model_root is not None:
        components += models(model_root)
    # the serial number is derived from the contents: the same image, the same document
    body = json.dumps(components, sort_keys=True).encode()
    serial = uuid.UUID(hashlib.sha256(body).hexdigest()[:32])
    return {"bomFormat": "CycloneDX", "specVersion": "1.5", "serialNumber": f"urn:uuid:{serial}",
            "version": 1,
            "metadata": {"component": {"type": "container", "name": name, "version": version,
                                       "bom-ref": f"image:{name}"},
                         "tools": {"components": [{"type": "application",
                                                   "name": "modelrail.images.sbom"}]}},
            "components": components}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modelrail.images.sbom")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    doc = bom(args.name, args.version, args.models)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"sbom: {len(doc['components'])} components -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
