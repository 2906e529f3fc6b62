"""Both notebooks run top to bottom on tiny phantoms (nbclient), and git holds them without
outputs. Parameters reach the kernel as environment variables (it inherits this process's)."""

from pathlib import Path

import nbformat
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from nbclient import NotebookClient

from src.train import train

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(name: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    ).execute()
    return notebook


def outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    return [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]


def outputs_text(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for output in outputs(notebook)
    )


def pictures(notebook: nbformat.NotebookNode) -> list[dict]:
    return [output for output in outputs(notebook) if "image/png" in output.get("data", {})]


def test_both_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} == {"data_tour.ipynb", "results.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (path.name, cell.source)


@pytest.fixture(autouse=True)
def kernel_environment(monkeypatch):
    # The kernel draws with matplotlib's inline backend (headless); an MPLBACKEND of the
    # caller would replace it and no figure would reach the outputs.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))


def test_data_tour_executes(monkeypatch):
    monkeypatch.setenv("SONOSEG_TOUR_SUBJECTS", "4")
    monkeypatch.setenv("SONOSEG_TOUR_SIZE", "96,66")
    notebook = execute("data_tour.ipynb")
    assert "'brain': 1.0" in outputs_text(notebook)  # every phantom image has a brain
    assert len(pictures(notebook)) == 1  # the overlays


def test_results_executes_on_a_tiny_run(phantom_raw, tmp_path_factory, tmp_path, monkeypatch):
    overrides = [
        f"data.root={phantom_raw}",
        "data.synthetic=null",
        f"data.cache_dir={tmp_path_factory.getbasetemp() / 'train-prepared'}",
        "data.image_size=[64,64]",
        "data.num_workers=0",
        "+experiment=unet_dice",
        "model.base_channels=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        f"paths.output_dir={tmp_path}",
    ]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        train(compose("train", overrides=overrides))
    # One epoch measures no predicted head; give the predictions the true HC + 1% so that the
    # Bland-Altman section has pairs to draw (the other columns stay as evaluated).
    per_image_csv = tmp_path / "checkpoints" / "per_image.csv"
    rows = pd.read_csv(per_image_csv)
    assert rows["hc_true"].notna().sum() >= 2
    rows["hc_pred"] = rows["hc_true"] * 1.01
    rows.to_csv(per_image_csv, index=False)
    monkeypatch.setenv("SONOSEG_RUN_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("SONOSEG_WORST", "2")
    notebook = execute("results.ipynb")
    text = outputs_text(notebook)
    assert f"{tmp_path / 'checkpoints'}:" in text and "no overlays" not in text
    assert "HC prediction - truth" in text
    assert len(pictures(notebook)) >= 3  # distributions, worst images, Bland-Altman
