"""The training entry point end to end on a tiny phantom: command, experiments, resume,
determinism, loggers, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig

from src.train import train

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.fixture
def data_overrides(phantom_raw: Path, tmp_path_factory) -> list[str]:
    """Point the data at the session's tiny phantom, small images, no worker processes."""
    cache = tmp_path_factory.getbasetemp() / "train-prepared"
    return [
        f"data.root={phantom_raw}",
        "data.synthetic=null",
        f"data.cache_dir={cache}",
        "data.image_size=[64,64]",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.log_every_n_steps=1",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def short_run(data_overrides, output_dir: Path, *extra: str) -> DictConfig:
    return compose_train(
        [
            "+experiment=unet_dice",
            "model.base_channels=8",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=2",
            *data_overrides,
            *extra,
        ],
        output_dir,
    )


def test_train_command_runs_as_written(data_overrides, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "+experiment=unet_dice",
        "trainer.fast_dev_run=true",
        *data_overrides,
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "config_resolved.yaml").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    splits = json.loads((run_dir / "splits.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_images"] == len(splits["test"]) > 0
    assert f"Output folder: {run_dir}" in done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_one_step(experiment, data_overrides, tmp_path):
    cfg = compose_train(
        [f"+experiment={experiment}", "trainer.fast_dev_run=true", *data_overrides], tmp_path
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_short_run_keeps_best_and_last_and_writes_summary(data_overrides, tmp_path):
    metrics = train(short_run(data_overrides, tmp_path))
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "last.ckpt").is_file()
    best = [p for p in ckpts.glob("epoch_*.ckpt")]
    assert len(best) == 1
    summary = json.loads((ckpts / "summary.json").read_text())
    assert summary["checkpoint"] == str(best[0])
    assert set(summary["per_class"]) == {"brain", "csp", "lv"}
    assert summary["num_images"] == len(summary["per_image"]) > 0
    assert {"id", "plane", "subject"} <= set(summary["per_image"][0])
    assert summary["mean"]["dice_mean"] == pytest.approx(metrics["test/dice_mean"])
    log_lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert "val/dice_mean" in log_lines[0] and "train/loss_epoch" in log_lines[0]


def test_resume_continues_at_the_next_epoch(data_overrides, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    train(short_run(data_overrides, first, "trainer.max_epochs=1", "test=false"))
    interrupted = torch.load(first / "checkpoints" / "last.ckpt", weights_only=False)
    assert interrupted["epoch"] == 0
    train(
        short_run(
            data_overrides, second, "trainer.max_epochs=2", "test=false", f"ckpt_path={first}"
        )
    )
    resumed = torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 1
    assert resumed["global_step"] == 2 * interrupted["global_step"]
    # The resumed run reuses the interrupted run's split.
    assert json.loads((second / "splits.json").read_text()) == json.loads(
        (first / "splits.json").read_text()
    )


def test_same_seed_gives_the_same_numbers(data_overrides, tmp_path):
    a = train(short_run(data_overrides, tmp_path / "a", "test=false"))
    b = train(short_run(data_overrides, tmp_path / "b", "test=false"))
    assert a["val/dice_mean"] == b["val/dice_mean"]
    assert a["train/loss_epoch"] == b["train/loss_epoch"]


def test_wandb_logs_offline_with_the_resolved_config(data_overrides, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    train(
        compose_train(
            [
                "+experiment=unet_dice",
                "logger=wandb",
                "trainer.fast_dev_run=true",
                "model.base_channels=8",
                *data_overrides,
            ],
            tmp_path,
        )
    )
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert wandb.run is None  # finished, not left dangling
    # Offline runs keep their config inside the run's record file until synced.
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    assert b"base_channels" in record and b"train_transform" in record


def test_a_failed_run_closes_wandb_and_exits_non_zero(data_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    # Two output classes for four labels: the loss fails inside the first training step.
    cfg = compose_train(
        [
            "+experiment=unet_dice",
            "logger=wandb",
            "trainer.fast_dev_run=true",
            "model.base_channels=8",
            "model.num_classes=2",
            *data_overrides,
        ],
        tmp_path,
    )
    with pytest.raises(SystemExit):
        train(cfg)
    assert wandb.run is None


def test_wrong_key_or_choice_gets_a_clear_error(tmp_path):
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_train(["+experiment=unet_dice", "model.no_such_key=1"], tmp_path)
    with pytest.raises(MissingConfigException, match="no_such_model"):
        compose_train(["+experiment=unet_dice", "model=no_such_model"], tmp_path)
    with pytest.raises(MissingConfigException, match="no_such_experiment"):
        compose_train(["+experiment=no_such_experiment"], tmp_path)


def test_missing_checkpoint_is_named(data_overrides, tmp_path, caplog):
    caplog.set_level("INFO")
    cfg = short_run(data_overrides, tmp_path, f"ckpt_path={tmp_path}/nope.ckpt")
    with pytest.raises(SystemExit):
        train(cfg)
    assert f"no checkpoint at {tmp_path}/nope.ckpt" in caplog.text
    assert f"Output folder: {tmp_path}" in caplog.text


def test_resuming_in_place_keeps_what_the_first_run_wrote(data_overrides, tmp_path):
    train(short_run(data_overrides, tmp_path, "trainer.max_epochs=1"))
    first_config = (tmp_path / "config_resolved.yaml").read_text()
    first_summary = (tmp_path / "checkpoints" / "summary.json").read_text()
    train(short_run(data_overrides, tmp_path, "trainer.max_epochs=2", "ckpt_path=last"))
    assert (tmp_path / "config_resolved.yaml").read_text() == first_config
    assert (tmp_path / "checkpoints" / "summary.json").read_text() == first_summary
    assert len(list(tmp_path.glob("config_resolved.*.yaml"))) == 1
    assert len(list((tmp_path / "checkpoints").glob("summary.*.json"))) == 1
