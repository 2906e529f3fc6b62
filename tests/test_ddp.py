"""Validation and test under DDP (trainer=ddp_sim: two CPU processes over gloo) count every
image once and score a checkpoint exactly as one process does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from src.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_overrides(phantom_raw: Path, tmp_path_factory) -> list[str]:
    """The tiny phantom, fold 1 of 5: 3 val and 3 test images, an odd count, so a padding
    sampler would give one of them to both processes."""
    return [
        f"data.root={phantom_raw}",
        "data.synthetic=null",
        f"data.cache_dir={tmp_path_factory.getbasetemp() / 'ddp-prepared'}",
        "data.image_size=[64,64]",
        "data.n_folds=5",
        "data.fold=1",
        "data.batch_size=2",
        "data.num_workers=0",
        "model.base_channels=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]


@pytest.fixture(scope="module")
def ddp_run(data_overrides, tmp_path_factory) -> Path:
    """One epoch and the test of its best checkpoint in two processes, as a user runs it
    (Lightning starts the second process by re-running the command)."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "+experiment=unet_dice",
        "trainer=ddp_sim",
        *data_overrides,
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_ddp_tests_every_image_once(ddp_run):
    summary = json.loads((ddp_run / "checkpoints" / "summary.json").read_text())
    test_ids = json.loads((ddp_run / "splits.json").read_text())["test"]
    assert len(test_ids) % 2 == 1
    assert [row["id"] for row in summary["per_image"]] == test_ids
    assert summary["num_images"] == len(test_ids)
    assert summary["checkpoint"] == str(ddp_run / "checkpoints" / "epoch_000.ckpt")
    assert summary["training"]["epochs_run"] == 1


def test_ddp_writes_the_run_records_once(ddp_run):
    # The second process re-runs the command in the same folder: it must not add its own.
    assert not list(ddp_run.glob("config_resolved.*.yaml"))
    assert not list(ddp_run.glob(".hydra.*"))
    assert not list((ddp_run / "csv").glob("resumed-*"))
    log = (ddp_run / "unet_dice.log").read_text()
    assert log.count("epoch 0/0 | ") == 1


def test_one_process_scores_the_ddp_checkpoint_the_same(ddp_run, data_overrides, tmp_path):
    # Resuming the finished one-epoch run trains nothing and tests its best checkpoint again,
    # here in one process; the new summary goes beside the first (timestamped).
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "+experiment=unet_dice",
                *data_overrides,
                f"ckpt_path={ddp_run}",
                f"paths.output_dir={tmp_path}",
            ],
        )
    train(cfg)
    ddp = json.loads((ddp_run / "checkpoints" / "summary.json").read_text())
    (single_path,) = (ddp_run / "checkpoints").glob("summary.*.json")
    single = json.loads(single_path.read_text())
    assert single["checkpoint"] == ddp["checkpoint"]
    assert single["per_image"] == ddp["per_image"]
    assert single["mean"] == pytest.approx(ddp["mean"], rel=1e-6)
    assert single["per_class"] == ddp["per_class"]
