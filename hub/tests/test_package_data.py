"""hub/pyproject.toml ships every data file the package reads, and lists no missing one."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HUB = Path(__file__).resolve().parents[1]
PACKAGE = HUB / "labhub"


def _patterns() -> list[str]:
    config = tomllib.loads((HUB / "pyproject.toml").read_text())
    patterns: list[str] = config["tool"]["setuptools"]["package-data"]["labhub"]
    return patterns


def test_every_package_data_pattern_matches_a_file() -> None:
    empty = [p for p in _patterns() if not any(PACKAGE.glob(p))]
    assert empty == [], f"package-data patterns matching no file: {empty}"


def test_every_data_file_of_the_package_is_shipped() -> None:
    shipped = {path for p in _patterns() for path in PACKAGE.glob(p)}
    data = {
        path
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }
    assert sorted(map(str, data - shipped)) == []
