"""The training entry point end to end on a tiny phantom: command, experiments, resume,
determinism, loggers, errors, the optimised metric, last.ckpt, the run's log."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from src.inference.checkpoint import load_model
from src.lit.segmentation import SegmentationModule
from src.models.speed import split_speed_options
from src.train import train

ROOT = Path(__file__).resolve().parents[1]
# diconvae_* are src.train_denoiser's experiments (tests/test_denoise_train.py runs them);
# lgg_* train on the LGG layout, not the phantom's (tests/data/readers/test_lgg.py runs them);
# uwmgi_* on the UW-Madison GI layout (tests/data/readers/test_uwmgi.py runs them on its
# synthetic record).
EXPERIMENTS = sorted(
    p.stem
    for p in (ROOT / "conf" / "experiment").glob("*.yaml")
    if not p.stem.startswith(("diconvae_", "lgg_", "uwmgi_"))
    # hc18_unet_cpu on trainer=cpu: both run here and in tests/models/test_speed.py
    and p.stem != "hc18_cpu"
)
# Experiments whose data is not the phantom's layout, or a part of it too small for 5 folds.
EXPERIMENT_DATA = {
    "hc18_unet": [f"data.root={ROOT / 'tests' / 'fixtures' / 'hc18'}", "data.n_folds=3"],
    "hc18_unet_cpu": [f"data.root={ROOT / 'tests' / 'fixtures' / 'hc18'}", "data.n_folds=3"],
    # The session phantom has 2 Diverse subjects: add a plane to fill 3 folds.
    "hc18_unet_diverse": ["data.select.plane=[Diverse,Trans-thalamic]", "data.n_folds=3"],
}


@pytest.fixture(scope="session")
def data_overrides(tiny_data) -> list[str]:
    return [*tiny_data, "trainer.log_every_n_steps=1"]


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


def run_command(*overrides: str) -> subprocess.CompletedProcess:
    """``python -m src.train`` as a user runs it (a real Hydra run), checked for success."""
    cmd = [sys.executable, "-m", "src.train", "+experiment=unet_dice", *overrides]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_train_command_runs_as_written(data_overrides, tmp_path):
    run_dir = tmp_path / "run"
    done = run_command("trainer.fast_dev_run=true", *data_overrides, f"hydra.run.dir={run_dir}")
    assert (run_dir / "config_resolved.yaml").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    splits = json.loads((run_dir / "splits.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_images"] == len(splits["test"]) > 0
    assert f"Output folder: {run_dir}" in done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_one_step(experiment, data_overrides, tmp_path):
    cfg = compose_train(
        [
            f"+experiment={experiment}",
            "trainer.fast_dev_run=true",
            *data_overrides,
            *EXPERIMENT_DATA.get(experiment, []),
        ],
        tmp_path,
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
    # Scored at the original size; the trainer's test pass at the training size is kept too.
    assert summary["settings"]["resolution"].startswith("original")
    assert summary["mean"]["dice_mean"] == pytest.approx(metrics["test_original_size/dice_mean"])
    training_size = summary["training_resolution"]
    assert training_size["mean"]["dice_mean"] == pytest.approx(metrics["test/dice_mean"])
    assert (ckpts / "per_image.csv").is_file()
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


def test_ema_checkpoints_hold_the_averaged_weights(data_overrides, tmp_path):
    """callbacks=ema: the same seed and steps as a plain run, but the checkpoint (and what
    validation scored) is the moving average, which src.eval loads as any network."""
    plain = tmp_path / "plain"
    train(short_run(data_overrides, plain, "test=false"))
    train(short_run(data_overrides, tmp_path / "ema", "test=false", "callbacks=ema"))

    def weights(run: Path) -> dict[str, torch.Tensor]:
        return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]

    averaged, trained = weights(tmp_path / "ema"), weights(plain)
    assert averaged.keys() == trained.keys()
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained)
    (best,) = (tmp_path / "ema" / "checkpoints").glob("epoch_*.ckpt")
    assert load_model(best).net is not None


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
    # Offline runs keep their config inside the run's record file until synced. W&B's service
    # process may still be flushing it when finish() returns (seen under load): wait for it.
    record_path = next(runs[0].glob("run-*.wandb"))
    deadline = time.monotonic() + 60
    while b"train_transform" not in record_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    record = record_path.read_bytes()
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
    first_metrics = (tmp_path / "csv" / "metrics.csv").read_text()
    train(short_run(data_overrides, tmp_path, "trainer.max_epochs=2", "ckpt_path=last"))
    assert (tmp_path / "config_resolved.yaml").read_text() == first_config
    assert (tmp_path / "checkpoints" / "summary.json").read_text() == first_summary
    assert (tmp_path / "csv" / "metrics.csv").read_text() == first_metrics
    assert len(list((tmp_path / "csv").glob("resumed-*/metrics.csv"))) == 1
    assert len(list(tmp_path.glob("config_resolved.*.yaml"))) == 1
    assert len(list((tmp_path / "checkpoints").glob("summary.*.json"))) == 1


def test_one_key_names_the_optimized_metric(tmp_path):
    cfg = compose_train(
        [
            "+experiment=unet_dice",
            "callbacks=early_stopping",
            "optimized_metric=val/loss",
            "optimized_mode=min",
        ],
        tmp_path,
    )
    callbacks = cfg.callbacks
    for node in (callbacks.model_checkpoint, callbacks.early_stopping, callbacks.training_log):
        assert (node.monitor, node.mode) == ("val/loss", "min")


# val/dice_mean by epoch, whatever the network learns: the best epoch (1) is not the last (2).
SCRIPTED_DICE_MEAN = [0.2, 0.9, 0.5]


class ScriptedMean:
    """A SegmentationMetrics whose ``dice_mean`` is replaced by a scripted value."""

    def __init__(self, metrics, dice_mean: float):
        self.metrics, self.dice_mean = metrics, dice_mean

    def compute(self) -> dict:
        return {**self.metrics.compute(), "dice_mean": torch.tensor(self.dice_mean)}

    def reset(self) -> None:
        self.metrics.reset()


@pytest.fixture(scope="module")
def scripted_run(data_overrides, tmp_path_factory):
    """A 3-epoch run whose val/dice_mean follows SCRIPTED_DICE_MEAN: its returned metrics,
    its folder and what it logged."""
    run_dir = tmp_path_factory.mktemp("scripted")
    log_metrics = SegmentationModule._log_metrics

    def log_scripted(self, stage, metrics):
        if stage == "val" and not self.trainer.sanity_checking:
            metrics = ScriptedMean(metrics, SCRIPTED_DICE_MEAN[self.current_epoch])
        log_metrics(self, stage, metrics)

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("src.lit.callbacks")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(SegmentationModule, "_log_metrics", log_scripted)
            metrics = train(short_run(data_overrides, run_dir, "trainer.max_epochs=3"))
    finally:
        logger.removeHandler(handler)
    return metrics, run_dir, records


def test_sweepers_get_the_best_checkpoints_score(scripted_run):
    metrics, run_dir, _ = scripted_run
    assert metrics["val/dice_mean"] == pytest.approx(SCRIPTED_DICE_MEAN[-1])  # the last epoch's
    assert metrics["val/dice_mean_best"] == pytest.approx(max(SCRIPTED_DICE_MEAN))
    best = torch.load(run_dir / "checkpoints" / "epoch_001.ckpt", weights_only=False)
    assert best["epoch"] == 1


def test_last_ckpt_holds_the_last_epoch(scripted_run):
    _, run_dir, _ = scripted_run
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == len(SCRIPTED_DICE_MEAN) - 1
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == [
        "epoch_001.ckpt",
        "last.ckpt",
    ]


def test_each_epoch_logs_one_line_and_the_fit_its_best_and_last(scripted_run):
    _, _, records = scripted_run
    epochs = [line for line in records if line.startswith("epoch ")]
    assert len(epochs) == 3
    assert epochs[0].startswith("epoch 0/2 | train/loss_epoch ")
    assert "val/dice brain " in epochs[0] and " lv " in epochs[0] and " csp " in epochs[0]
    assert "best val/dice_mean 0.2000 (epoch 0)" in epochs[0]
    assert "best val/dice_mean 0.9000 (epoch 1)" in epochs[2]
    assert epochs[2].endswith(" s")
    assert records[-1] == "fit done: best val/dice_mean 0.9000 at epoch 1; last epoch 2: 0.5000"


def test_summary_records_the_training(scripted_run, data_overrides):
    _, run_dir, _ = scripted_run
    summary = json.loads((run_dir / "checkpoints" / "summary.json").read_text())
    training = summary["training"]
    assert set(training) == {
        "best_epoch",
        "best_score",
        "monitor",
        "last_epoch",
        "epochs_run",
        "seconds_per_epoch",
        "num_parameters",
    }
    assert training["best_epoch"] == 1
    assert training["best_score"] == pytest.approx(0.9)
    assert training["monitor"] == "val/dice_mean"
    assert (training["last_epoch"], training["epochs_run"]) == (2, 3)
    assert training["seconds_per_epoch"] > 0
    model_config = OmegaConf.to_container(short_run(data_overrides, run_dir).model, resolve=True)
    net = hydra.utils.instantiate(split_speed_options(model_config)[0])
    assert training["num_parameters"] == sum(p.numel() for p in net.parameters())


@pytest.mark.slow  # two runs of the command; the default suite checks the CSV part in-process
def test_resuming_in_place_keeps_the_first_runs_records(data_overrides, tmp_path):
    """A real Hydra run: Hydra's own record (.hydra/) is written only there."""
    run_dir = tmp_path / "run"
    common = [
        "model.base_channels=8",
        "trainer.limit_train_batches=2",
        "test=false",
        *data_overrides,
        f"hydra.run.dir={run_dir}",
    ]
    run_command(*common, "trainer.max_epochs=1")
    first = {
        name: (run_dir / name).read_text()
        for name in ("csv/metrics.csv", ".hydra/overrides.yaml", ".hydra/config.yaml")
    }
    first_log = (run_dir / "unet_dice.log").read_text()

    resumed = run_command(*common, "trainer.max_epochs=2", "ckpt_path=last")
    for name, text in first.items():
        assert (run_dir / name).read_text() == text, name
    # Beside them: the resumed run's metrics (epoch 1 only) and Hydra's record of it.
    (resumed_csv,) = (run_dir / "csv").glob("resumed-*/metrics.csv")
    with resumed_csv.open() as file:
        assert {row["epoch"] for row in csv.DictReader(file) if row["epoch"]} == {"1"}
    (resumed_hydra,) = run_dir.glob(".hydra.*/overrides.yaml")
    assert "ckpt_path=last" in resumed_hydra.read_text()
    # The log goes on after the first run's lines; progress shows on stdout too.
    log = (run_dir / "unet_dice.log").read_text()
    assert log.startswith(first_log)
    assert "epoch 0/0 | " in first_log and "epoch 1/1 | " in log.removeprefix(first_log)
    assert "epoch 1/1 | " in resumed.stdout
