"""The evaluation home: checkpoint payload and loader, inference at the original size,
post-processing, surface distances (against a brute-force recomputation), the per-image
evaluation and its records."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from src.evaluation.checkpoint import PAYLOAD_KEY, load_model
from src.evaluation.inference import predict_labels, predict_logits
from src.evaluation.postprocess import fill_holes, keep_largest_component, postprocess
from src.train import train

ROOT = Path(__file__).resolve().parents[1]
CLASS_NAMES = ("background", "brain", "csp", "lv")


def train_overrides(phantom_raw: Path, cache: Path) -> list[str]:
    """The session phantom at 64 px and a tiny UNet: one training batch, no test."""
    return [
        "+experiment=unet_dice",
        f"data.root={phantom_raw}",
        "data.synthetic=null",
        f"data.cache_dir={cache}",
        "data.image_size=[64,64]",
        "data.batch_size=4",
        "data.num_workers=0",
        "model.base_channels=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]


@pytest.fixture(scope="module")
def trained_run(phantom_raw, tmp_path_factory) -> Path:
    """A one-batch training run (test=false): its folder holds checkpoints/epoch_000.ckpt."""
    run_dir = tmp_path_factory.mktemp("evaluation-run")
    cache = tmp_path_factory.getbasetemp() / "evaluation-prepared"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *train_overrides(phantom_raw, cache),
                "test=false",
                f"paths.output_dir={run_dir}",
            ],
        )
    train(cfg)
    return run_dir


@pytest.fixture()
def lone_checkpoint(trained_run, tmp_path) -> Path:
    """The best checkpoint copied alone into an empty folder."""
    (best,) = (trained_run / "checkpoints").glob("epoch_*.ckpt")
    return Path(shutil.copy(best, tmp_path / "model.ckpt"))


def test_checkpoint_carries_what_rebuilds_the_network(lone_checkpoint):
    payload = torch.load(lone_checkpoint, weights_only=True)[PAYLOAD_KEY]
    assert payload["format"] == 1
    assert payload["model"]["_target_"] == "src.models.unet.UNet"
    assert payload["model"]["base_channels"] == 8
    assert payload["class_names"] == list(CLASS_NAMES)
    assert payload["image_size"] == [64, 64]
    assert payload["in_channels"] == 1


def test_load_model_needs_only_the_checkpoint_file(lone_checkpoint):
    restored = load_model(lone_checkpoint)
    assert restored.class_names == CLASS_NAMES
    assert restored.image_size == (64, 64)
    assert restored.in_channels == 1
    assert restored.checkpoint_path == lone_checkpoint
    assert not restored.net.training
    logits = restored.net(torch.zeros(1, 1, 64, 64))
    assert logits.shape == (1, 4, 64, 64)


def test_load_model_errors_name_the_file_and_what_is_wrong(lone_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_model(tmp_path / "missing.ckpt")
    checkpoint = torch.load(lone_checkpoint, weights_only=True)
    old = tmp_path / "old.ckpt"
    torch.save({k: v for k, v in checkpoint.items() if k != PAYLOAD_KEY}, old)
    with pytest.raises(ValueError, match=r"old\.ckpt has no 'sonoseg' entry.*re-train"):
        load_model(old)
    checkpoint[PAYLOAD_KEY] = {
        **checkpoint[PAYLOAD_KEY],
        "model": {**checkpoint[PAYLOAD_KEY]["model"], "base_channels": 16},
    }
    mismatched = tmp_path / "mismatched.ckpt"
    torch.save(checkpoint, mismatched)
    with pytest.raises(ValueError, match="mismatched.ckpt: the weights do not match"):
        load_model(mismatched)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="garbage.ckpt"):
        load_model(garbage)


class Probe(torch.nn.Module):
    """Logits that show what the network saw: class 1 where the input is bright, and a
    small left-right ramp in class 2 (so a flip shows)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        ramp = torch.linspace(0, 0.2, x.shape[-1]).expand_as(x)
        return torch.cat([0.5 - x, x - 0.5, ramp, torch.zeros_like(x)], dim=1) * self.weight


def test_predict_logits_back_at_the_original_size_keep_the_geometry():
    image = np.zeros((66, 96), np.uint8)
    image[20:50, 30:80] = 255  # a bright box at the original size
    probe = Probe()
    logits = predict_logits(probe, image, (64, 64))
    assert logits.shape == (4, 66, 96) and logits.dtype == torch.float32
    (seen,) = probe.seen
    assert seen.shape == (1, 1, 64, 64) and seen.min() >= 0 and seen.max() == 1.0
    labels = predict_labels(probe, image, (64, 64))
    assert labels.shape == (66, 96) and labels.dtype == np.uint8
    # The box comes back where it was, to within a pixel at its edges.
    assert ((labels == 1) != (image > 0)).sum() <= 2 * (30 + 50)
    assert (labels[22:48, 32:78] == 1).all() and (labels[:18] != 1).all()


def test_flip_tta_averages_the_image_and_its_mirror():
    image = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    probe = Probe()
    plain = predict_logits(probe, image, (32, 32))
    both = predict_logits(probe, image, (32, 32), tta_flip=True)
    assert torch.allclose(both[:2], plain[:2], atol=1e-6)  # pixel-wise classes: unchanged
    assert torch.allclose(both[2], torch.full_like(both[2], 0.1), atol=1e-6)  # ramp + mirror
    assert probe.seen[-1].shape[0] == 2
    assert torch.equal(probe.seen[-1][1], probe.seen[-1][0].flip(-1))


def test_postprocess_rules():
    mask = np.zeros((12, 12), bool)
    mask[1:6, 1:6] = True
    mask[8:10, 8:10] = True
    assert keep_largest_component(mask).sum() == 25
    assert not keep_largest_component(np.zeros((4, 4), bool)).any()
    ring = np.zeros((7, 7), bool)
    ring[1:6, 1:6] = True
    ring[3, 3] = False
    assert fill_holes(ring).sum() == 25

    labels = np.zeros((12, 12), np.uint8)
    labels[1:8, 1:8] = 1  # brain
    labels[3:5, 3:5] = 2  # csp inside the brain: never painted over
    labels[6, 6] = 0  # a hole in the brain
    labels[10, 10] = 1  # a stray brain pixel
    out = postprocess(labels, {"brain": ["keep_largest_component", "fill_holes"]}, CLASS_NAMES)
    assert out[10, 10] == 0 and out[6, 6] == 1
    assert (out[3:5, 3:5] == 2).all()
    assert (out[labels == 0] != 2).all()
    with pytest.raises(KeyError, match="unknown class 'skull'"):
        postprocess(labels, {"skull": ["fill_holes"]}, CLASS_NAMES)
    with pytest.raises(KeyError, match="'dilate'"):
        postprocess(labels, {"brain": ["dilate"]}, CLASS_NAMES)
