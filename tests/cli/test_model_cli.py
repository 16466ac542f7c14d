"""`modelrail model …` as a user runs it: a real subprocess, exit codes, text and JSON.

JSON outputs are validated against the JSON Schema of the model card, so a field that
disappears or changes type fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.semi_supervised import LabelSpreading

from modelrail.models.card import ModelCard
from modelrail.models.convert import convert
from tests.models.helpers import make_split, tamper_first_float_initializer, write_model

CARD_SCHEMA = ModelCard.model_json_schema()


def run(args: list[str], env: dict[str, str], cwd: Path | None = None,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelrail", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MODELRAIL_REGISTRY": str(tmp_path / "reg"),
            "BENTOML_HOME": str(tmp_path / "bentoml")}


@pytest.fixture
def iris_files(tmp_path: Path) -> tuple[Path, Path, Any]:
    split = make_split("iris")
    est = LogisticRegression(max_iter=1000).fit(split.X_train, split.y_train)
    model, data = write_model(tmp_path / "iris", est, split)
    return model, data, est


def test_register_show_list_verify_json(env: dict[str, str], iris_files: Any) -> None:
    model, data, _ = iris_files
    reg = run(["model", "register", str(model), "--data", str(data), "--name", "iris",
               "--version", "1", "-o", "json"], env)
    assert reg.returncode == 0, reg.stderr
    out = json.loads(reg.stdout)
    assert out["created"] is True
    jsonschema.validate(out["card"], CARD_SCHEMA)

    show = run(["model", "show", "iris:1", "--output", "json"], env)
    assert show.returncode == 0, show.stderr
    card = json.loads(show.stdout)
    jsonschema.validate(card, CARD_SCHEMA)
    assert card == out["card"]

    listing = run(["model", "list", "-o", "json"], env)
    cards = json.loads(listing.stdout)
    assert [c["name"] + ":" + c["version"] for c in cards] == ["iris:1"]
    jsonschema.validate(cards, {"type": "array", "items": CARD_SCHEMA,
                                "$defs": CARD_SCHEMA["$defs"]})

    verify = run(["model", "verify", "iris:1", "-o", "json"], env)
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout) == {
        "ref": "iris:1", "sha256": card["sha256"], "ok": True,
        "registry_sha256": card["sha256"], "bentoml_sha256": card["sha256"]}

    text = run(["model", "show", "iris:1"], env).stdout
    assert card["sha256"] in text and "parity:       passed" in text


def test_schema_bites_on_a_broken_card(env: dict[str, str], iris_files: Any) -> None:
    model, data, _ = iris_files
    reg = run(["model", "register", str(model), "--data", str(data), "--name", "iris",
               "--version", "1", "-o", "json"], env)
    card = json.loads(reg.stdout)["card"]
    del card["sha256"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(card, CARD_SCHEMA)


def test_exit_codes(env: dict[str, str], iris_files: Any, tmp_path: Path) -> None:
    model, data, est = iris_files
    base = ["model", "register", str(model), "--data", str(data), "--name", "iris"]
    assert run([*base, "--version", "1"], env).returncode == 0

    # parity: a tampered graph is refused with exit 4 and nothing is registered
    tampered = tmp_path / "tampered.onnx"
    tampered.write_bytes(tamper_first_float_initializer(convert(est, 4).onnx_bytes))
    bad = run([*base, "--version", "2", "--onnx", str(tampered)], env)
    assert bad.returncode == 4, bad.stderr
    assert "parity FAILED" in bad.stderr and "input of row" in bad.stderr
    assert "iris:2" not in run(["model", "list"], env).stdout

    # conflict: same version, different bytes -> exit 5
    other = LogisticRegression(C=0.01, max_iter=1000).fit(make_split().X_train,
                                                          make_split().y_train)
    other_model, _ = write_model(tmp_path / "other", other, make_split())
    conflict = run(["model", "register", str(other_model), "--data", str(data), "--name",
                    "iris", "--version", "1"], env)
    assert conflict.returncode == 5 and "already registered" in conflict.stderr

    # unsupported estimator -> exit 3
    split = make_split()
    ls_model, ls_data = write_model(tmp_path / "ls", LabelSpreading().fit(
        split.X_train, split.y_train), split)
    unsupported = run(["model", "register", str(ls_model), "--data", str(ls_data), "--name",
                       "ls", "--version", "1"], env)
    assert unsupported.returncode == 3 and "LabelSpreading" in unsupported.stderr

    # tampered registry file -> verify exits 6 naming both hashes
    card = json.loads(run(["model", "show", "iris:1", "-o", "json"], env).stdout)
    blob = Path(env["MODELRAIL_REGISTRY"]) / "blobs" / "sha256" / f"{card['sha256']}.onnx"
    blob.write_bytes(blob.read_bytes() + b"\x00")
    verify = run(["model", "verify", "iris:1"], env)
    assert verify.returncode == 6
    assert card["sha256"] in verify.stderr and "registry copy has" in verify.stderr

    # invalid input -> exit 2, no traceback
    for args in (["model", "show", "iris:latest"], ["model", "show", "iris"],
                 [*base, "--version", "Bad Version"],
                 [*base, "--version", "latest"],  # reserved: BentoML's alias for newest
                 ["model", "register", str(tmp_path / "nope.joblib"), "--data", str(data),
                  "--name", "x", "--version", "1"],
                 ["model", "register", str(data), "--data", str(data), "--name", "x",
                  "--version", "1"]):
        res = run(args, env)
        assert res.returncode == 2, (args, res.stderr)
        assert "accepted:" in res.stderr and "Traceback" not in res.stderr


def test_registry_flag_overrides_environment(env: dict[str, str], iris_files: Any,
                                             tmp_path: Path) -> None:
    model, data, _ = iris_files
    flag_dir = tmp_path / "flagged"
    res = run(["model", "register", str(model), "--data", str(data), "--name", "iris",
               "--version", "1", "--registry", str(flag_dir), "--no-bentoml"], env)
    assert res.returncode == 0, res.stderr
    assert (flag_dir / "models" / "iris" / "1.json").exists()
    assert not Path(env["MODELRAIL_REGISTRY"]).exists()


def test_telemetry_is_off_in_the_cli_process() -> None:
    code = ("import modelrail.cli, os; "
            "print(os.environ['ORT_DISABLE_TELEMETRY'], os.environ['BENTOML_DO_NOT_TRACK'])")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORT_DISABLE_TELEMETRY", "BENTOML_DO_NOT_TRACK")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1", "true"]


NETWORK_AUDIT = """
import sys
seen = []
def hook(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        seen.append((event, repr(args)[:200]))
sys.addaudithook(hook)
import os, socket
if os.environ.get("AUDIT_PROBE"):
    socket.getaddrinfo("localhost", 80)  # proves the hook sees lookups
from modelrail.cli import main
code = main(sys.argv[1:])
import json
print("AUDIT" + json.dumps(seen))
sys.exit(code)
"""


def test_registration_opens_no_network_connection(env: dict[str, str], iris_files: Any) -> None:
    """Every socket connect and name lookup in the process is recorded: there must be none."""
    model, data, _ = iris_files
    res = subprocess.run(
        [sys.executable, "-c", NETWORK_AUDIT, "model", "register", str(model), "--data",
         str(data), "--name", "iris", "--version", "1"],
        env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    audit = json.loads(res.stdout.split("AUDIT", 1)[1])
    assert audit == []
    # the same harness with one deliberate lookup records it: the check can fail
    probe = subprocess.run(
        [sys.executable, "-c", NETWORK_AUDIT, "model", "list"],
        env={**env, "AUDIT_PROBE": "1"}, capture_output=True, text=True, timeout=60,
        check=False)
    assert json.loads(probe.stdout.split("AUDIT", 1)[1])[0][0] == "socket.getaddrinfo"


def test_sample_prints_the_rows_or_the_configmap_the_operator_reads(
        env: dict[str, str], iris_files: Any) -> None:
    from modelrail.rollout.kube.platform import SAMPLE_KEY

    model, data, _ = iris_files
    assert run(["model", "register", str(model), "--data", str(data), "--name", "iris",
                "--version", "1"], env).returncode == 0
    rows = run(["model", "sample", "iris:1"], env)
    assert rows.returncode == 0, rows.stderr
    held_out = json.loads(rows.stdout)
    assert held_out and {len(r) for r in held_out} == {4}
    cm = run(["model", "sample", "iris:1", "--configmap", "modelrail-prod"], env)
    assert cm.returncode == 0, cm.stderr
    obj = json.loads(cm.stdout)
    assert (obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"]) == (
        "ConfigMap", "iris-validation", "modelrail-prod")
    assert json.loads(obj["data"][SAMPLE_KEY]) == held_out  # what the operator parses
    missing = run(["model", "sample", "iris:9"], env)
    assert missing.returncode != 0 and "iris:9" in missing.stderr, missing.stderr
    assert missing.stdout == ""
