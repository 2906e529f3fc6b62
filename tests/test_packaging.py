"""The package metadata admits every Python the pinned torch has wheels for."""

import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("version", ["3.11.7", "3.12.0", "3.13.1", "3.14.0"])
def test_supported_pythons_can_install(version):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version in SpecifierSet(project["requires-python"])
