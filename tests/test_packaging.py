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


def test_console_scripts_compose_the_configs_from_any_folder(tmp_path):
    """``sonoseg-train`` is ``python -m src.train``: the same configs, found from any working
    directory (Hydra would read a relative config path as a Python package there)."""
    import subprocess
    import sys

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"sonoseg-train", "sonoseg-eval", "sonoseg-predict", "sonoseg-report"} <= set(scripts)
    script = Path(sys.executable).with_name("sonoseg-train")
    result = subprocess.run(
        [str(script), "--cfg", "job", "+experiment=unet_dice"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "task_name: unet_dice" in result.stdout
