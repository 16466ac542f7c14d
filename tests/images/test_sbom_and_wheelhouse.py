"""The SBOM lists what an environment holds (packages, models with their sha256), and the
wheelhouse refuses requirements it cannot check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelrail.images import sbom
from modelrail.images.podman import ContainerError
from modelrail.images.wheelhouse import ensure_wheelhouse, pins

ROOT = Path(__file__).resolve().parents[2]


def test_the_bom_lists_the_python_environment_and_is_deterministic() -> None:
    doc = sbom.bom("modelrail-test", "0", None)
    names = {c["name"].lower() for c in doc["components"]}
    assert {"modelrail", "onnxruntime", "numpy"} <= names
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    assert sbom.bom("modelrail-test", "0", None)["serialNumber"] == doc["serialNumber"]
    assert all(c["purl"].startswith(("pkg:pypi/", "pkg:deb/")) for c in doc["components"])
    assert any(c["purl"].startswith("pkg:pypi/modelrail@") for c in doc["components"])


def test_models_are_listed_with_the_sha256_of_their_bytes(tmp_path: Path) -> None:
    version = tmp_path / "iris" / "2"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(b"onnx bytes")
    (version / "card.json").write_text(json.dumps({"sha256": "f" * 64, "task": "x"}))
    [model] = sbom.models(tmp_path)
    assert model["type"] == "machine-learning-model"
    assert (model["name"], model["version"]) == ("iris", "2")
    assert model["hashes"][0]["content"] == hashlib.sha256(b"onnx bytes").hexdigest()
    assert {"name": "modelrail:card.sha256", "value": "f" * 64} in model["properties"]


def test_debian_packages_come_from_dpkg_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n"
                      "Architecture: amd64\n\nPackage: gone\nStatus: deinstall ok "
                      "config-files\nVersion: 1\n")
    [pkg] = sbom.debian_packages(status)
    assert pkg["purl"] == "pkg:deb/debian/libc6@2.36-9?arch=amd64&distro=bookworm"


def test_every_image_requirement_is_pinned_with_hashes() -> None:
    for image in ("inference", "controller", "loadtest"):
        req = ROOT / "services" / image / "requirements.txt"
        text = req.read_text()
        assert len(pins(req)) == text.count("==") > 5
        assert text.count("--hash=sha256:") >= len(pins(req))
        assert any(p.startswith("modelrail") for p in pins(req)) is False


def test_a_wheelhouse_without_hashes_is_refused(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("numpy==2.0.0\n")
    with pytest.raises(ContainerError, match="no hashes"):
        ensure_wheelhouse(req)
