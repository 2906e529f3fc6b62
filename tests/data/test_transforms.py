"""Augmentation presets (conf/augmentation) and the ultrasound transforms in src/data/transforms."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import hydra
import numpy as np
import pytest
from omegaconf import OmegaConf

from src.data.transforms import (
    AcousticShadow,
    DepthGain,
    SectorEdgeJitter,
    SpeckleNoise,
    beam_coordinates,
)

ROOT = Path(__file__).resolve().parents[2]
# The albumentations presets (gpu.yaml batches torch transforms: tests/data/test_gpu_augment.py).
PRESETS = sorted(
    path
    for path in (ROOT / "conf" / "augmentation").glob("*.yaml")
    if OmegaConf.load(path)["_target_"] == "albumentations.Compose"
)
SIZE = 64


def preset(path: Path) -> A.Compose:
    return hydra.utils.instantiate(OmegaConf.load(path))


def new_transforms() -> list[A.ImageOnlyTransform]:
    """Each of this project's transforms, always applied, with effects large enough to see."""
    return [
        SpeckleNoise(looks=(1, 3), p=1),
        DepthGain(slope_db=(-9, 9), slider_db=3, p=1),
        AcousticShadow(attenuation_db=(10, 20), p=1),
        SectorEdgeJitter(angle_cut=(0.1, 0.2), depth_cut=(0.1, 0.2), p=1),
    ]


NEW_IDS = [type(t).__name__ for t in new_transforms()]


def fan_scan() -> tuple[np.ndarray, np.ndarray]:
    """A small B-mode-like scan: textured tissue in a fan (black outside), a bright reflector,
    and a mask with two labelled blobs well inside the fan."""
    depth, angle = beam_coordinates(SIZE, SIZE, 0.6)
    texture = np.random.default_rng(0).integers(30, 90, (SIZE, SIZE))
    image = np.where((np.abs(angle) < 0.45) & (depth < 0.9 * SIZE), texture, 0).astype(np.uint8)
    cv2.circle(image, (32, 20), 4, 230, thickness=-1)
    mask = np.zeros_like(image)
    cv2.circle(mask, (32, 20), 4, 1, thickness=-1)
    cv2.circle(mask, (28, 40), 5, 2, thickness=-1)
    return image, mask


def centroid(region: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(region)
    return np.array([rows.mean(), cols.mean()])


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_every_preset_moves_image_and_mask_together(path):
    """A bright disc labelled as itself: wherever a draw puts the disc, the label follows."""
    transform = preset(path)
    transform.set_random_seed(0)
    image = np.full((SIZE, SIZE), 30, np.uint8)
    cv2.circle(image, (32, 32), 10, 230, thickness=-1)
    mask = (image > 128).astype(np.uint8)
    moved = 0
    for _ in range(30):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (SIZE, SIZE) and out["image"].dtype == np.uint8
        assert out["mask"].shape == (SIZE, SIZE) and out["mask"].dtype == np.uint8
        # A median filter first: speckle and noise flip single pixels, not the disc's outline.
        bright = cv2.medianBlur(out["image"], 3) > 128
        assert np.abs(centroid(bright) - centroid(out["mask"] == 1)).max() < 1.0
        moved += np.abs(centroid(out["mask"] == 1) - (32, 32)).max() > 1
    if path.stem != "none":
        assert moved > 0, "no draw moved the disc: the alignment check proved nothing"


def test_the_ultrasound_preset_uses_the_ultrasound_transforms():
    names = [type(t).__name__ for t in preset(ROOT / "conf/augmentation/ultrasound.yaml")]
    assert set(NEW_IDS) <= set(names)


@pytest.mark.parametrize("transform", new_transforms(), ids=NEW_IDS)
def test_each_transform_changes_the_image_only(transform):
    image, mask = fan_scan()
    transform.set_random_seed(0)
    out = transform(image=image, mask=mask)
    assert np.array_equal(out["mask"], mask) and out["mask"].dtype == np.uint8
    assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
    assert not np.array_equal(out["image"], image)
    assert not out["image"][image == 0].any(), "black (below the display floor) must stay black"


@pytest.mark.parametrize("transform", new_transforms(), ids=NEW_IDS)
def test_each_transform_repeats_under_a_seed_whatever_the_global_random_state(transform):
    image, mask = fan_scan()
    outputs = []
    for seed, global_seed in ((7, 0), (7, 1), (8, 0)):
        np.random.seed(global_seed)
        transform.set_random_seed(seed)
        outputs.append(transform(image=image, mask=mask)["image"])
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0], outputs[2])


def test_the_pipeline_seed_reaches_the_ultrasound_transforms():
    """Compose.set_random_seed (what the DataModule calls) makes a whole run of the preset
    repeat, including the transforms written here."""
    transform = preset(ROOT / "conf/augmentation/ultrasound.yaml")
    image, mask = fan_scan()
    runs = []
    for _ in range(2):
        transform.set_random_seed(3)
        runs.append([transform(image=image, mask=mask)["image"] for _ in range(8)])
    assert all(np.array_equal(a, b) for a, b in zip(*runs, strict=True))
    assert any(not np.array_equal(a, image) for a in runs[0])


@pytest.mark.parametrize("looks", [1, 4])
def test_speckle_keeps_the_mean_grey_and_adds_spread(looks):
    image = np.full((128, 128), 100, np.uint8)
    transform = SpeckleNoise(looks=(looks, looks), p=1)
    transform.set_random_seed(0)
    out = transform(image=image)["image"].astype(float)
    assert abs(out.mean() - 100) < 2
    expected_std = 255 / 60 * 10 / np.log(10) * {1: 1.28, 4: 0.51}[looks]  # std of ln(gamma)
    assert 0.8 * expected_std < out.std() < 1.2 * expected_std


def test_speckle_grains_are_longer_across_the_beam_than_along_it():
    transform = SpeckleNoise(looks=(1, 1), grain=(0.005, 0.02), p=1)
    transform.set_random_seed(0)
    out = transform(image=np.full((128, 128), 100, np.uint8))["image"].astype(float)
    out -= out.mean()
    along = (out[1:] * out[:-1]).mean() / out.var()  # neighbours in depth
    across = (out[:, 1:] * out[:, :-1]).mean() / out.var()
    assert across > along + 0.1


@pytest.mark.parametrize("slope", [-8.0, 8.0])
def test_gain_without_sliders_is_monotone_in_depth(slope):
    image = np.full((SIZE, SIZE), 100, np.uint8)
    transform = DepthGain(overall_db=(0, 0), slope_db=(slope, slope), slider_db=0, p=1)
    out = transform(image=image)["image"].astype(int)
    steps = np.diff(out, axis=0) * np.sign(slope)
    assert (steps >= 0).all()
    # Depth is measured from the apex, so the top centre keeps its grey and the bottom
    # centre changes by the slope (8 dB at 60 dB over 255 grey levels: 34 levels).
    assert out[0, SIZE // 2] == 100
    assert abs(out[-1, SIZE // 2] - 100 - slope * 255 / 60) <= 1


def test_gain_sliders_vary_smoothly_with_depth():
    image = np.full((128, 128), 100, np.uint8)
    transform = DepthGain(overall_db=(0, 0), slope_db=(0, 0), slider_db=6, p=1)
    transform.set_random_seed(0)
    column = transform(image=image)["image"][:, 64].astype(int)
    assert np.ptp(column) > 5
    assert np.abs(np.diff(column, 2)).max() <= 2  # no kinks beyond rounding


@pytest.mark.parametrize("seed", range(5))
def test_a_shadow_darkens_below_a_bright_blob_and_not_above_it(seed):
    """The blob sits on the middle beam; the shadow's beams fan out below it."""
    image = np.full((SIZE, SIZE), 100, np.uint8)
    cv2.circle(image, (32, 20), 4, 250, thickness=-1)
    transform = AcousticShadow(width=(0.1, 0.1), attenuation_db=(12, 12), p=1)
    transform.set_random_seed(seed)
    out = transform(image=image)["image"].astype(int)
    assert np.array_equal(out[:16], image[:16])  # above the blob
    assert np.array_equal(out[image == 250], image[image == 250])  # the reflector itself
    assert (out <= image).all()
    below = out[25:, 22:42]  # the blob's beams down to the bottom edge
    assert (below.min(axis=1) < 100 - 0.8 * 12 * 255 / 60).all()  # the band's middle: 12 dB
    assert np.array_equal(out[:, :12], image[:, :12])  # beams away from the blob


def test_no_bright_pixel_no_shadow():
    image = np.full((SIZE, SIZE), 100, np.uint8)
    assert np.array_equal(AcousticShadow(p=1)(image=image)["image"], image)


def test_the_fan_narrows_without_touching_labelled_pixels():
    image, mask = fan_scan()
    transform = SectorEdgeJitter(angle_cut=(0.4, 0.5), depth_cut=(0.5, 0.5), p=1)
    transform.set_random_seed(0)
    out = transform(image=image, mask=mask)["image"]
    assert (out == 0).sum() > (image == 0).sum() + 100
    assert np.array_equal(out[mask > 0], image[mask > 0])
    # Without a mask the same cuts go deeper.
    transform.set_random_seed(0)
    unguarded = transform(image=image)["image"]
    assert (unguarded == 0).sum() > (out == 0).sum()


def test_bad_input_and_settings_are_named():
    with pytest.raises(ValueError, match=r"SpeckleNoise: expected a uint8 grayscale \(H, W\)"):
        SpeckleNoise(p=1)(image=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"DepthGain[\s\S]*slope_db"):
        DepthGain(slope_db=(6, -6))
    with pytest.raises(ValueError, match=r"SpeckleNoise[\s\S]*looks"):
        SpeckleNoise(looks=(0, 2))
