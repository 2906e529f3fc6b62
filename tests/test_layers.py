"""The layer contracts of pyproject.toml ([tool.importlinter]) hold for src/, and break when a
module imports upwards: the check is real, not a configuration that passes anything."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ENTRY_POINTS = ("src.train", "src.eval", "src.predict", "src.report")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the ``src`` package of ``tree`` (its own pyproject.toml)."""
    return subprocess.run(
        [str(LINT_IMPORTS)],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    shutil.copytree(ROOT / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_layers_hold_for_src():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        # Training and evaluation below their entry point: a library never imports one.
        ("src/lit/segmentation.py", "src.train", "Layers"),
        ("src/viewer_app/ui.py", "src.predict", "Layers"),
        # The checkpoint format sits below evaluation, not inside it.
        ("src/inference/checkpoint.py", "src.evaluation.evaluate", "Layers"),
        ("src/data/cache.py", "src.denoise.classical", "Layers"),
        ("src/data/datamodule.py", "src.synthetic.phantom", "Synthetic"),
    ],
)
def test_an_upward_import_breaks_a_contract(tree_copy, module, forbidden, contract):
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(f"{original}\nimport {forbidden}  # noqa: E402, F401\n")
        result = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {forbidden}" in result.stdout
    assert contract in result.stdout


def test_no_module_of_src_imports_an_entry_point():
    """Spelled out apart from the layers: the complaint that started them."""
    importers = [
        path
        for path in (ROOT / "src").rglob("*.py")
        if any(
            line.startswith((f"from {e} import", f"import {e}\n", f"import {e} "))
            for e in ENTRY_POINTS
            for line in path.read_text().splitlines(keepends=True)
        )
    ]
    assert importers == []
