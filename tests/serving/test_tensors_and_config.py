"""Fast unit tests of the conversion policy and serving configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modelrail.errors import InvalidInputError
from modelrail.models.card import TensorSpec
from modelrail.serving.config import ServingConfig, parse_model_ref
from modelrail.serving.errors import InferenceError
from modelrail.serving.tensors import from_json, from_raw, to_model_input, to_raw

SPEC = TensorSpec(name="input", datatype="FP32", shape=[-1, 2], feature_names=["a", "b"])


def convert(arr: np.ndarray, datatype: str) -> np.ndarray:  # type: ignore[type-arg]
    return to_model_input(arr, datatype, SPEC, max_rows=10, where="input 'input'")


def test_fp64_and_small_ints_convert_exactly() -> None:
    out = convert(np.array([[1.5, -2.0]]), "FP64")
    assert out.dtype == np.float32 and out.tolist() == [[1.5, -2.0]]
    out = convert(np.array([[2**24, -(2**24)]], dtype=np.int64), "INT64")
    assert out.tolist() == [[16777216.0, -16777216.0]]


@pytest.mark.parametrize("arr,datatype,fragment", [
    (np.array([[2**24 + 1, 0]], dtype=np.int64), "INT64", "feature 'a'"),
    (np.array([[0, np.nan]]), "FP64", "row 0, feature 'b' is nan"),
    (np.array([[1e39, 0]]), "FP64", "beyond FP32's range"),
    (np.array([[1, 0]], dtype=np.bool_), "BOOL", "datatype BOOL is not accepted"),
    (np.zeros((11, 2), dtype=np.float32), "FP32", "11 rows exceed the limit of 10"),
    (np.zeros((0, 2), dtype=np.float32), "FP32", "shape [0, 2] is not accepted"),
    (np.zeros((2,), dtype=np.float32), "FP32", "shape [2] is not accepted"),
])
def test_refusals_name_the_problem(arr: np.ndarray, datatype: str,  # type: ignore[type-arg]
                                   fragment: str) -> None:
    with pytest.raises(InferenceError) as info:
        convert(arr, datatype)
    assert fragment in info.value.message and info.value.kind.http_status == 400


def test_json_and_raw_decoding() -> None:
    assert from_json([[1, 2], [3, 4]], "FP32", [2, 2], "x").tolist() == [[1, 2], [3, 4]]
    with pytest.raises(InferenceError, match="out of range for INT8"):
        from_json([1, 300], "INT8", [1, 2], "x")
    with pytest.raises(InferenceError, match="is a boolean"):
        from_json([True, 1.0], "FP32", [1, 2], "x")
    raw = np.array([[1.0, 2.0]], dtype=np.float32).tobytes()
    assert from_raw(raw, "FP32", [1, 2], "x").tolist() == [[1.0, 2.0]]
    assert to_raw(np.array(["ab", "c"], dtype=object), "BYTES") == (
        b"\x02\x00\x00\x00ab\x01\x00\x00\x00c")


def test_config_from_env() -> None:
    sha = "a" * 64
    cfg = ServingConfig.from_env({"MODELRAIL_MODELS": f"iris:1, iris:2@sha256:{sha}",
                                  "MODELRAIL_WORKERS": "2"})
    assert [str(m) for m in cfg.models] == ["iris:1", f"iris:2@sha256:{sha}"]
    assert cfg.workers == 2 and cfg.grpc_port == 8001
    assert ServingConfig.from_env(cfg.to_env()) == cfg


@pytest.mark.parametrize("env,fragment", [
    ({}, "MODELRAIL_MODELS: no models to serve"),
    ({"MODELRAIL_MODELS": "iris"}, "has no version"),
    ({"MODELRAIL_MODELS": "iris:latest"}, "not pinned"),
    ({"MODELRAIL_MODELS": "iris:1,iris:1"}, "listed twice"),
    ({"MODELRAIL_MODELS": "iris:1", "MODELRAIL_GRPC_PORT": "70000"},
     "MODELRAIL_GRPC_PORT: bad value '70000'; accepted: an integer from 1 to 65535"),
    ({"MODELRAIL_MODELS": "iris:1@md5:abc"}, "bad digest"),
])
def test_config_errors(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        ServingConfig.from_env(env)
    assert fragment in str(info.value)


def test_parse_model_ref_round_trip() -> None:
    ref = parse_model_ref("diabetes:2")
    assert (ref.name, ref.version, ref.sha256) == ("diabetes", "2", None)


def test_serving_processes_run_with_telemetry_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelrail.processes import server_command

    monkeypatch.setenv("ORT_DISABLE_TELEMETRY", "0")  # even if the caller's env says otherwise
    monkeypatch.delenv("BENTOML_DO_NOT_TRACK", raising=False)
    cmd = server_command(ServingConfig.from_env({"MODELRAIL_MODELS": "iris:1"}),
                         http_host="127.0.0.1", http_port=8000)
    assert cmd.env["ORT_DISABLE_TELEMETRY"] == "1"
    assert cmd.env["BENTOML_DO_NOT_TRACK"] == "true"
    # a private BentoML home whose model store is the shared one
    home = Path(cmd.env["BENTOML_HOME"])
    assert (home / "models").is_symlink()
    shutil.rmtree(home)  # nothing was spawned to own it (the session checks for leftovers)


def test_private_home_is_removed_but_the_shared_store_is_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from modelrail.processes import _HOMES, private_bentoml_home, stop

    shared = tmp_path / "shared"
    (shared / "models" / "iris").mkdir(parents=True)
    (shared / "models" / "iris" / "keep.txt").write_text("model")
    home = private_bentoml_home(shared)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                            start_new_session=True)
    _HOMES[proc.pid] = home
    stop(proc)
    assert not home.exists()
    assert (shared / "models" / "iris" / "keep.txt").read_text() == "model"
