"""The evaluation home: checkpoint payload and loader, inference at the original size,
post-processing, surface distances (against a brute-force recomputation), the per-image
evaluation and its records."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from src.biometry import measure_head
from src.data.cache import resize_mask
from src.data.prepared import read_index, read_original
from src.evaluation.evaluate import (
    Prediction,
    choose_postprocess,
    evaluate,
    resolve_postprocess,
)
from src.evaluation.surface import class_surface_distances, hd95_assd
from src.inference.checkpoint import PAYLOAD_KEY, load_model
from src.inference.postprocess import fill_holes, keep_largest_component, postprocess
from src.inference.predictor import predict_labels, predict_logits

ROOT = Path(__file__).resolve().parents[2]
CLASS_NAMES = ("background", "brain", "csp", "lv")


@pytest.fixture()
def lone_checkpoint(tiny_trained_run, tmp_path) -> Path:
    """The best checkpoint copied alone into an empty folder."""
    (best,) = (tiny_trained_run / "checkpoints").glob("epoch_*.ckpt")
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


def brute_force_hd95_assd(pred, target, spacing=(1.0, 1.0)):
    """Straight from the definition: boundary pixels by checking the 4 neighbours one by
    one, all pairwise distances."""

    def boundary_points(mask):
        padded = np.pad(mask, 1)
        points = [
            (r - 1, c - 1)
            for r, c in zip(*np.nonzero(padded), strict=True)
            if not (padded[r - 1, c] and padded[r + 1, c] and padded[r, c - 1] and padded[r, c + 1])
        ]
        return np.array(points, dtype=float) * np.array(spacing)

    p, t = boundary_points(pred), boundary_points(target)
    pairwise = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    forward, backward = pairwise.min(1), pairwise.min(0)
    hd95 = max(np.percentile(forward, 95), np.percentile(backward, 95))
    return hd95, np.concatenate([forward, backward]).mean()


def test_surface_distances_on_hand_built_masks():
    target = np.zeros((10, 20), bool)
    target[2:6, 3:9] = True
    shifted = np.roll(target, 1, axis=1)
    # 16 boundary pixels each; per direction 2 corners and 4 side pixels are 1 px off.
    assert hd95_assd(shifted, target) == pytest.approx((1.0, 12 / 32))
    assert hd95_assd(target, target) == (0.0, 0.0)
    diagonal = math.hypot(10, 20)
    assert class_surface_distances(target, target)[0] == "both_present"
    nothing = np.zeros_like(target)
    case, hd95, assd = class_surface_distances(nothing, nothing)
    assert case == "both_empty" and math.isnan(hd95) and math.isnan(assd)
    one_pixel = np.zeros_like(target)
    one_pixel[4, 4] = True
    assert class_surface_distances(nothing, one_pixel) == ("target_only", diagonal, diagonal)
    assert class_surface_distances(one_pixel, nothing) == ("prediction_only", diagonal, diagonal)
    assert class_surface_distances(nothing, one_pixel, (2.0, 0.5))[1] == math.hypot(20, 10)
    # A one-pixel miss: a single target pixel, the prediction next to it.
    beside = np.roll(one_pixel, 1, axis=0)
    assert class_surface_distances(beside, one_pixel) == ("both_present", 1.0, 1.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.3, 0.7)])
def test_surface_distances_agree_with_brute_force(spacing):
    rng = np.random.default_rng(1)
    for _ in range(5):
        pred = ndimage.binary_opening(rng.random((24, 30)) > 0.55)
        target = ndimage.binary_opening(rng.random((24, 30)) > 0.5)
        expected = brute_force_hd95_assd(pred, target, spacing)
        assert hd95_assd(pred, target, spacing) == pytest.approx(expected)


def test_evaluation_agrees_with_a_recomputation_from_saved_masks(
    lone_checkpoint, prepared_dir, tmp_path
):
    restored = load_model(lone_checkpoint)
    rows = read_index(prepared_dir).head(4)
    result = evaluate(
        restored.net,
        rows,
        prepared_dir,
        CLASS_NAMES,
        restored.image_size,
        postprocess_setting="none",
    )
    assert [row["id"] for row in result["rows"]] == list(rows["image"])
    compared = 0
    for scored, index_row in zip(result["rows"], rows.to_dict("records"), strict=True):
        image, truth = read_original(prepared_dir, index_row)
        saved = tmp_path / "mask.png"
        cv2.imwrite(str(saved), predict_labels(restored.net, image, restored.image_size))
        labels = cv2.imread(str(saved), cv2.IMREAD_UNCHANGED)
        assert labels.shape == truth.shape == (index_row["orig_height"], index_row["orig_width"])
        size = index_row["pixel_size_mm"]
        for label, name in enumerate(CLASS_NAMES[1:], start=1):
            p, t = labels == label, truth == label
            both = p.sum() + t.sum()
            dice = 2 * (p & t).sum() / both if both else math.nan
            assert scored[f"dice_{name}"] == pytest.approx(dice, nan_ok=True)
            if p.any() and t.any():
                hd95, assd = brute_force_hd95_assd(p, t, (size, size))
                assert scored[f"hd95_mm_{name}"] == pytest.approx(hd95)
                assert scored[f"assd_mm_{name}"] == pytest.approx(assd)
                assert scored[f"hd95_px_{name}"] == pytest.approx(hd95 / size)
                compared += 1
    assert compared > 0  # the distances were checked on at least one class of one image


class Oracle(torch.nn.Module):
    """Returns fixed one-hot logits (a prediction made at the training size)."""

    def __init__(self, labels: np.ndarray, num_classes: int) -> None:
        super().__init__()
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), num_classes)
        self.register_buffer("logits", one_hot.permute(2, 0, 1)[None].float())
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1, -1, -1)


def test_a_training_size_prediction_resized_back_matches_the_original_geometry(prepared_dir):
    row = read_index(prepared_dir).iloc[0].to_dict()
    image, truth = read_original(prepared_dir, row)
    small = resize_mask(truth, (48, 64))
    labels = predict_labels(Oracle(small, 4), image, (48, 64))
    assert labels.shape == truth.shape
    brain = labels == 1
    assert 2 * (brain & (truth == 1)).sum() / (brain.sum() + (truth == 1).sum()) > 0.9
    truth_head, back_head = measure_head(truth), measure_head(labels)
    assert back_head.hc == pytest.approx(truth_head.hc, rel=0.03)
    assert (back_head.center_x, back_head.center_y) == pytest.approx(
        (truth_head.center_x, truth_head.center_y), abs=1.0
    )


def test_auto_postprocess_keeps_only_the_rules_that_raise_val_dice():
    truth = np.zeros((20, 20), np.uint8)
    truth[2:12, 2:12] = 1
    truth[14:17, 14:17] = 3
    pred = truth.copy()
    pred[6, 6] = 0  # a hole in the brain: filling it helps
    pred[18, 1] = 1  # a stray brain pixel: removing it helps
    pred[14:17, 18] = 3  # a smaller second LV piece: keeping the largest drops it
    decision = choose_postprocess([Prediction({}, truth, pred)], CLASS_NAMES)
    assert decision["rules"] == {
        "brain": ["keep_largest_component", "fill_holes"],
        "lv": ["keep_largest_component"],
    }
    means = decision["mean_dice_by_candidate"]
    assert means["brain"]["keep_largest_component+fill_holes"] == pytest.approx(1.0)
    assert "csp" not in decision["rules"]  # absent from both: nothing to gain
    clean = choose_postprocess([Prediction({}, truth, truth)], CLASS_NAMES)
    assert clean["rules"] == {}  # nothing raises a perfect Dice: no rule
    with pytest.raises(KeyError, match="skull"):
        resolve_postprocess({"skull": ["fill_holes"]}, CLASS_NAMES, None)
    with pytest.raises(ValueError, match="postprocess='sometimes'"):
        resolve_postprocess("sometimes", CLASS_NAMES, None)
