"""Denoisers end to end: src.train_denoiser (every diconvae_* experiment, checkpoints,
summary.json, classical filters scored on the same pairs, every pair source) and the
denoiser in front of the segmenter in src.train (frozen or joint, classical in the cached
data, rebuilt from the checkpoint for eval and predict, a sweep over denoiser=none,median)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from support import write_random_vgg16
from torch import nn

from src.data.cache import cache_dir_for, open_cache
from src.data.classes import FETAL_HEAD
from src.denoise.classical import Median
from src.denoise.diconvae import DiConvAE
from src.inference.checkpoint import load_denoiser, load_model
from src.inference.prestage import DenoisedSegmenter, FilterLayer
from src.lit.segmentation import SegmentationModule
from src.models.unet import UNet
from src.train import train
from src.train_denoiser import train_denoiser

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("diconvae_*.yaml"))
# Small and quick: a few phantom pairs rendered at 96 x 66, a narrow DiConvAE.
TINY_PAIRS = [
    "denoiser.pairs.render_size=[96,66]",
    "denoiser.pairs.sizes={train: 8, val: 4, test: 4}",
    "trainer.log_every_n_steps=1",
]
TINY_DENOISER = [*TINY_PAIRS, "denoiser.net.channels=[4,4,8,8]"]


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=[*overrides, f"paths.output_dir={output_dir}"])


@pytest.fixture(scope="module")
def fake_vgg16(tmp_path_factory) -> Path:
    return write_random_vgg16(tmp_path_factory.mktemp("vgg"))


@pytest.fixture(scope="module")
def denoiser_run(tiny_data, tmp_path_factory) -> Path:
    """A DiConvAE trained for 2 epochs on phantom pairs, tested: its run folder."""
    run_dir = tmp_path_factory.mktemp("denoiser-run")
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    train_denoiser(
        compose_config(
            "train_denoiser",
            ["+experiment=diconvae_l1", *tiny_data, *TINY_DENOISER, "trainer.max_epochs=2"],
            run_dir,
        )
    )
    torch.use_deterministic_algorithms(was_deterministic)
    return run_dir


def experiment_overrides(name: str, fake_vgg16: Path, tiny_trained_run: Path) -> list[str]:
    if name.endswith("_perceptual") and name != "diconvae_task_perceptual":
        return [f"denoiser.loss.terms.perceptual.weights_path={fake_vgg16}"]
    if name == "diconvae_task_perceptual":
        return [
            f"denoiser.loss.terms.task.ckpt_path={tiny_trained_run / 'checkpoints'}/epoch_000.ckpt"
        ]
    return []


# --- src.train_denoiser ---------------------------------------------------------------------


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_denoiser_experiment_runs_one_step(
    experiment, tiny_data, fake_vgg16, tiny_trained_run, tmp_path
):
    cfg = compose_config(
        "train_denoiser",
        [
            f"+experiment={experiment}",
            "trainer.fast_dev_run=true",
            *tiny_data,
            *TINY_DENOISER,
            *experiment_overrides(experiment, fake_vgg16, tiny_trained_run),
        ],
        tmp_path,
    )
    metrics = train_denoiser(cfg)
    assert np.isfinite(metrics["train/loss"])
    summary = json.loads((tmp_path / "checkpoints" / "summary.json").read_text())
    assert summary["num_images"] == 4 and summary["checkpoint"] is None


def test_a_trained_denoiser_keeps_its_best_checkpoint_and_psnr_ssim(denoiser_run):
    summary = json.loads((denoiser_run / "checkpoints" / "summary.json").read_text())
    best = Path(summary["checkpoint"])
    assert best.parent == denoiser_run / "checkpoints" and best.name.startswith("epoch_")
    assert set(summary["mean"]) == {"psnr", "ssim", "psnr_input", "ssim_input"}
    assert summary["num_images"] == len(summary["per_image"]) == 4
    assert summary["per_image"][0]["id"].startswith("phantom-test-")
    assert summary["training"]["epochs_run"] == 2
    assert summary["denoiser"]["_target_"] == "src.denoise.diconvae.DiConvAE"
    metrics = (denoiser_run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "val/psnr" in metrics and "val/ssim" in metrics and "train/loss_epoch" in metrics
    # The run folder alone rebuilds the network (its best checkpoint), weights included.
    net, config = load_denoiser(denoiser_run)
    assert isinstance(net, DiConvAE) and config["channels"] == [4, 4, 8, 8]
    state = torch.load(best, weights_only=True)["state_dict"]
    assert torch.equal(net.state_dict()["encoder.0.0.weight"], state["net.encoder.0.0.weight"])
    assert not any(key.startswith("loss.") for key in state)


def test_a_classical_filter_is_scored_on_the_same_test_pairs(denoiser_run, tiny_data, tmp_path):
    train_denoiser(
        compose_config("train_denoiser", ["denoiser=median", *tiny_data, *TINY_PAIRS], tmp_path)
    )
    scored = json.loads((tmp_path / "checkpoints" / "summary.json").read_text())
    learned = json.loads((denoiser_run / "checkpoints" / "summary.json").read_text())
    assert scored["checkpoint"] is None and scored["training"] is None
    assert scored["denoiser"] == {"_target_": "src.denoise.classical.Median", "ksize": 5}
    assert scored["mean"]["psnr_input"] == pytest.approx(learned["mean"]["psnr_input"])
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_denoiser_none_is_refused_with_a_clear_error(tiny_data, tmp_path, caplog):
    with pytest.raises(SystemExit):
        train_denoiser(compose_config("train_denoiser", ["denoiser=none", *tiny_data], tmp_path))
    assert "denoiser=none has nothing to do" in caplog.text


def test_self_supervised_pairs_come_from_the_segmentation_folds(tiny_data, tmp_path):
    cfg = compose_config(
        "train_denoiser",
        [
            "denoiser/pairs=self_supervised",
            "trainer.fast_dev_run=true",
            "denoiser.net.channels=[4,4,4,4]",
            *tiny_data,
        ],
        tmp_path,
    )
    train_denoiser(cfg)
    splits = json.loads((tmp_path / "splits.json").read_text())
    summary = json.loads((tmp_path / "checkpoints" / "summary.json").read_text())
    assert {row["id"] for row in summary["per_image"]} <= set(splits["test"])
    assert summary["mean"]["psnr_input"] < 40  # the speckle was added


def test_folder_pairs_feed_training(tiny_data, tmp_path):
    noisy_dir, clean_dir = tmp_path / "noisy", tmp_path / "clean"
    noisy_dir.mkdir()
    clean_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        clean = np.full((40, 60), 20 * i, np.uint8)
        cv2.imwrite(str(clean_dir / f"{i}.png"), clean)
        cv2.imwrite(str(noisy_dir / f"{i}.png"), clean + rng.integers(0, 30, clean.shape, np.uint8))
    cfg = compose_config(
        "train_denoiser",
        [
            "denoiser/pairs=folders",
            f"denoiser.pairs.noisy_dir={noisy_dir}",
            f"denoiser.pairs.clean_dir={clean_dir}",
            "trainer.fast_dev_run=true",
            "denoiser.net.channels=[4,4,4,4]",
            *tiny_data,
        ],
        tmp_path / "run",
    )
    train_denoiser(cfg)
    summary = json.loads((tmp_path / "run" / "checkpoints" / "summary.json").read_text())
    assert summary["num_images"] == 1


# --- the denoiser in front of the segmenter ---------------------------------------------------


def segmentation_module(trainable: bool) -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(
        net=UNet(1, 4, base_channels=4),
        loss=nn.CrossEntropyLoss(),
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        scheduler=None,
        class_names=FETAL_HEAD.names,
        scheduler_monitor="val/dice_mean",
        model_config={"_target_": "src.models.unet.UNet", "base_channels": 4},
        image_size=(32, 32),
        in_channels=1,
        denoiser=DiConvAE(channels=(4, 4, 4, 4)),
        denoiser_trainable=trainable,
        denoiser_config={"_target_": "src.denoise.diconvae.DiConvAE", "channels": [4, 4, 4, 4]},
    )


@pytest.mark.parametrize("trainable", [False, True])
def test_a_frozen_prestage_gets_no_gradient_and_a_joint_one_does(trainable):
    module = segmentation_module(trainable).train()  # as Lightning switches it each epoch
    denoiser = module.denoiser
    running_mean = denoiser.encoder[0][1].running_mean.clone()
    image, mask = torch.rand(2, 1, 32, 32), torch.randint(0, 4, (2, 32, 32))
    module.loss(module(image), mask).backward()
    grads = [p.grad for p in denoiser.parameters()]
    optimized = {
        id(p)
        for group in module.configure_optimizers()["optimizer"].param_groups
        for p in group["params"]
    }
    assert all(p.grad is not None for p in module.net.parameters())
    if trainable:
        assert denoiser.training
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
        assert all(id(p) in optimized for p in denoiser.parameters())
        assert not torch.equal(denoiser.encoder[0][1].running_mean, running_mean)
    else:
        assert not denoiser.training  # batch norm and dropout as trained
        assert all(g is None for g in grads)
        assert not any(p.requires_grad for p in denoiser.parameters())
        assert not any(id(p) in optimized for p in denoiser.parameters())
        assert torch.equal(denoiser.encoder[0][1].running_mean, running_mean)


def short_segmentation_run(tiny_run, output_dir: Path, *extra: str) -> DictConfig:
    return compose_config("train", [*tiny_run, *extra], output_dir)


@pytest.mark.parametrize("trainable", [False, True])
def test_src_train_puts_the_trained_denoiser_in_front(trainable, denoiser_run, tiny_run, tmp_path):
    train(
        short_segmentation_run(
            tiny_run,
            tmp_path,
            "denoiser=diconvae",
            f"denoiser.ckpt_path={denoiser_run}",
            f"denoiser.trainable={str(trainable).lower()}",
        )
    )
    (best,) = (tmp_path / "checkpoints").glob("epoch_*.ckpt")
    trained = torch.load(best, weights_only=True)["state_dict"]
    pretrained = torch.load(
        json.loads((denoiser_run / "checkpoints" / "summary.json").read_text())["checkpoint"],
        weights_only=True,
    )["state_dict"]
    weights = [key.removeprefix("net.") for key in pretrained if key.endswith("weight")]
    same = [torch.equal(trained[f"denoiser.{key}"], pretrained[f"net.{key}"]) for key in weights]
    assert all(same) if not trainable else not all(same)
    # Eval and predict rebuild the denoiser in front of the segmenter from the file alone.
    restored = load_model(best)
    assert isinstance(restored.net, DenoisedSegmenter)
    assert isinstance(restored.net.denoiser, DiConvAE)
    assert (tmp_path / "checkpoints" / "summary.json").is_file()


def test_a_frozen_denoiser_without_weights_is_refused(tiny_run, tmp_path, caplog):
    with pytest.raises(SystemExit):
        train(short_segmentation_run(tiny_run, tmp_path, "denoiser=diconvae"))
    assert "a frozen denoiser needs trained weights (denoiser.ckpt_path=" in caplog.text


def test_a_classical_filter_runs_in_the_cache_and_again_at_eval(tiny_run, tiny_data, tmp_path):
    train(short_segmentation_run(tiny_run, tmp_path, "denoiser=median", "denoiser.filter.ksize=3"))
    cache_root = Path(next(o for o in tiny_data if o.startswith("data.cache_dir=")).split("=")[1])
    # The session's cache dir also holds other tests' records (HC18): take the phantom's copy.
    root = Path(next(o for o in tiny_data if o.startswith("data.root=")).split("=")[1])
    (prepared,) = [p for p in cache_root.glob(f"{root.name}-*") if (p / "index.csv").is_file()]
    plain, _, ids = open_cache(cache_dir_for(prepared, (64, 64)))
    filtered, _, filtered_ids = open_cache(cache_dir_for(prepared, (64, 64), Median(ksize=3)))
    assert filtered_ids == ids
    assert all(
        np.array_equal(f, Median(ksize=3)(np.array(p)))
        for f, p in zip(filtered, plain, strict=True)
    )
    (best,) = (tmp_path / "checkpoints").glob("epoch_*.ckpt")
    restored = load_model(best)
    assert isinstance(restored.net.denoiser, FilterLayer)
    assert restored.net.denoiser.image_filter == Median(ksize=3)


def test_a_sweep_over_denoisers_runs_with_fast_dev_run(tiny_run, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        *tiny_run,
        "trainer.fast_dev_run=true",
        "denoiser=none,median",
        f"hydra.sweep.dir={tmp_path}",
    ]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for job, choice in (("0", "none"), ("1", "median")):
        assert f"denoiser={choice}" in (tmp_path / job / ".hydra" / "overrides.yaml").read_text()
        summary = json.loads((tmp_path / job / "summary.json").read_text())
        assert summary["num_images"] > 0
