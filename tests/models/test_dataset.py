"""Split files: every malformed file gets an error naming the file and the rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelrail.errors import InvalidInputError
from modelrail.models.dataset import Split, fingerprint, load_split, save_split


def _save(path: Path, **arrays: np.ndarray) -> Path:  # type: ignore[type-arg]
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    return path


def test_round_trip(tmp_path: Path, iris_split: Split) -> None:
    save_split(tmp_path / "d.npz", iris_split)
    loaded = load_split(tmp_path / "d.npz")
    np.testing.assert_array_equal(loaded.X_test, iris_split.X_test)
    assert loaded.feature_names == iris_split.feature_names
    assert fingerprint(loaded.X_train, loaded.y_train) == fingerprint(iris_split.X_train,
                                                                      iris_split.y_train)


def test_fingerprint_sees_any_change(iris_split: Split) -> None:
    X = iris_split.X_train.copy()
    before = fingerprint(X, iris_split.y_train)
    X[3, 2] += 1e-9
    assert fingerprint(X, iris_split.y_train) != before


@pytest.mark.parametrize("arrays,needle", [
    ({"X_train": np.ones((3, 2)), "y_train": np.ones(3)}, "missing arrays ['X_test', 'y_test']"),
    ({"X_train": np.ones((3, 2)), "y_train": np.ones(3), "X_test": np.ones((2, 3)),
      "y_test": np.ones(2)}, "X_train has 2 features but X_test has 3"),
    ({"X_train": np.ones((3, 2)), "y_train": np.ones(4), "X_test": np.ones((2, 2)),
      "y_test": np.ones(2)}, "y_train must be 1-D with one value per row (3)"),
    ({"X_train": np.array([[1.0, np.nan]]), "y_train": np.ones(1), "X_test": np.ones((1, 2)),
      "y_test": np.ones(1)}, "X_train contains NaN"),
    ({"X_train": np.array([["a", "b"]]), "y_train": np.ones(1), "X_test": np.ones((1, 2)),
      "y_test": np.ones(1)}, "X_train must be a non-empty 2-D numeric array"),
    ({"X_train": np.ones((1, 2)), "y_train": np.ones(1), "X_test": np.ones((1, 2)),
      "y_test": np.ones(1), "feature_names": np.array(["a"])}, "feature_names has 1 names"),
])
def test_bad_split_files(tmp_path: Path, arrays: dict, needle: str) -> None:  # type: ignore[type-arg]
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InvalidInputError) as info:
        load_split(path)
    assert needle in str(info.value) and str(path) in str(info.value)


def test_not_an_npz(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(InvalidInputError, match=r"not a readable \.npz"):
        load_split(tmp_path / "x.npz")


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    path = _save(tmp_path / "p.npz", X_train=np.array([{"a": 1}], dtype=object),
                 y_train=np.ones(1), X_test=np.ones((1, 1)), y_test=np.ones(1))
    with pytest.raises(InvalidInputError, match=r"not a readable \.npz"):
        load_split(path)
