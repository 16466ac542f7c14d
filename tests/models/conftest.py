"""Fixtures for the model pipeline tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelrail.models.dataset import Split
from modelrail.models.registry import Registry
from tests.models.helpers import make_split


@pytest.fixture
def iris_split() -> Split:
    return make_split("iris")


@pytest.fixture
def diabetes_split() -> Split:
    return make_split("diabetes")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")
