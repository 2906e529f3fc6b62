"""The GPU data path on CPU tensors: each batched transform against the albumentations /
SpeckleNoise transform of the CPU path with the same parameters, image-mask alignment under
random draws, and the DataModule serving batches gathered from a device-held cache."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import hydra
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from src.data.gpu_augment import (
    CacheRows,
    DevicePath,
    GpuAugment,
    affine_matrices,
    brightness_contrast,
    gamma,
    hflip,
    speckle,
    warp,
)
from src.data.transforms import SpeckleNoise
from src.train import train

ROOT = Path(__file__).resolve().parents[2]
H, W = 48, 64


@pytest.fixture(scope="module")
def scan() -> tuple[np.ndarray, np.ndarray]:
    """A grey image with textured structures and its 3-label mask."""
    rng = np.random.default_rng(0)
    mask = np.zeros((H, W), np.uint8)
    cv2.ellipse(mask, (40, 22), (14, 9), 30, 0, 360, 1, -1)
    mask[6:12, 5:30] = 2
    image = (mask * 90 + 20 + rng.integers(0, 40, (H, W))).astype(np.uint8)
    return image, mask


def _batch(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(image).float().div(255)[None, None],
        torch.from_numpy(mask).long()[None],
    )


def _grey(image: torch.Tensor) -> np.ndarray:
    return image[0, 0].numpy() * 255


def test_flip_is_albumentations_flip(scan):
    image, mask = scan
    expected = A.HorizontalFlip(p=1)(image=image, mask=mask)
    flipped, flipped_mask = hflip(*_batch(image, mask), torch.tensor([True]))
    assert np.array_equal(_grey(flipped).round().astype(np.uint8), expected["image"])
    assert np.array_equal(flipped_mask[0].numpy(), expected["mask"])
    same, same_mask = hflip(*_batch(image, mask), torch.tensor([False]))
    assert np.array_equal(same_mask[0].numpy(), mask)


@pytest.mark.parametrize(
    ("angle", "scale", "tx", "ty"),
    [
        (10.0, 1.0, 0.0, 0.0),
        (-15.0, 1.1, 0.05, -0.03),
        (0.0, 0.9, 0.0, 0.0),
        (7.0, 0.95, -0.04, 0.05),
    ],
)
def test_affine_matches_albumentations_geometry_and_masks(scan, angle, scale, tx, ty):
    image, mask = scan
    cpu = A.Affine(
        scale=(scale, scale),
        translate_percent={"x": (tx, tx), "y": (ty, ty)},
        rotate=(angle, angle),
        interpolation=cv2.INTER_LINEAR,
        mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        fill_mask=0,
        p=1,
    )(image=image, mask=mask)
    matrices = affine_matrices(
        H, W, *(torch.tensor([float(v)]) for v in (angle, scale, scale, tx, ty))
    )
    warped, warped_mask = warp(*_batch(image, mask), matrices, torch.tensor([True]))
    assert np.abs(_grey(warped) - cpu["image"]).mean() < 1.0  # grey levels of 255
    assert (warped_mask[0].numpy() == cpu["mask"]).mean() > 0.995


def test_intensity_transforms_match_albumentations(scan):
    image, mask = scan
    cpu = A.RandomBrightnessContrast(
        brightness_limit=(0.1, 0.1), contrast_limit=(-0.12, -0.12), p=1
    )
    gpu = brightness_contrast(
        _batch(image, mask)[0], torch.tensor([0.88]), torch.tensor([0.1]), torch.tensor([True])
    )
    assert np.abs(_grey(gpu) - cpu(image=image)["image"]).max() <= 1.0
    cpu_gamma = A.RandomGamma(gamma_limit=(115, 115), p=1)(image=image)["image"]
    gpu_gamma = gamma(_batch(image, mask)[0], torch.tensor([1.15]), torch.tensor([True]))
    assert np.abs(_grey(gpu_gamma) - cpu_gamma).max() <= 1.0


def test_speckle_has_the_cpu_transforms_statistics(scan):
    image = np.full((64, 96), 128, np.uint8)
    image[:, :8] = 0  # outside the fan
    torch.manual_seed(0)
    batch = torch.from_numpy(image).float().div(255)[None, None].repeat(8, 1, 1, 1)
    looks = torch.tensor([2, 2, 2, 2, 8, 8, 8, 8])
    chosen = torch.tensor([True] * 7 + [False])
    out = speckle(batch, looks, chosen, (0.0025, 0.0048), 60.0) * 255
    cpu = SpeckleNoise(looks=(2, 2), p=1)
    cpu.set_random_seed(0)
    cpu_two_looks = np.stack([cpu(image=image)["image"] for _ in range(4)]).astype(np.float32)
    assert torch.equal(out[7], batch[7] * 255)  # not chosen: unchanged
    assert (out[:, :, :, :8] == 0).all()  # zero pixels stay zero
    inside = out[..., 8:]
    # Unit geometric mean: the mean grey is kept; the spread is the CPU transform's.
    assert inside[:7].mean().item() == pytest.approx(128, abs=2.5)
    cpu_std = cpu_two_looks[..., 8:].std()
    assert inside[:4].std().item() == pytest.approx(cpu_std, rel=0.15)
    assert inside[4:7].std().item() < 0.7 * inside[:4].std().item()  # more looks: milder


def test_random_batches_keep_masks_aligned_with_their_images(scan):
    # No intensity change: the grey of each pixel still names its label after the geometry.
    _, mask = scan
    torch.manual_seed(1)
    masks = torch.from_numpy(mask).long().repeat(16, 1, 1)
    images = (masks.float() * 100 + 30).div(255).unsqueeze(1)
    augment = GpuAugment(
        flip_p=0.5,
        affine={
            "p": 1.0,
            "scale": [0.9, 1.1],
            "translate_percent": [-0.05, 0.05],
            "rotate": [-15, 15],
        },
    )
    out_images, out_masks = augment(images, masks)
    assert out_images.shape == images.shape and out_masks.dtype == torch.long
    labels_from_grey = ((out_images[:, 0] * 255 - 30) / 100).round().clamp(min=0).long()
    inside = out_images[:, 0] > 0.05  # away from the zero fill outside
    agree = (labels_from_grey == out_masks)[inside].float().mean().item()
    assert agree > 0.97
    assert not torch.equal(out_masks, masks)  # something moved


def test_multilabel_masks_move_with_their_label_map_and_keep_overlaps(scan):
    # Two overlapping channels (label >= 1, label >= 2) must come out as the same thresholds of
    # the label map warped by the same draws.
    _, mask = scan
    labels = torch.from_numpy(mask).long().repeat(4, 1, 1)
    channels = torch.stack([labels >= 1, labels >= 2], dim=1).float()
    images = torch.rand(4, 1, *labels.shape[-2:])
    augment = GpuAugment(
        flip_p=0.5,
        affine={"p": 1.0, "scale": [0.9, 1.1], "translate_percent": [0, 0.05], "rotate": [-15, 15]},
    )
    torch.manual_seed(3)
    _, warped_labels = augment(images, labels)
    torch.manual_seed(3)
    _, warped_channels = augment(images, channels)
    assert warped_channels.shape == channels.shape and warped_channels.dtype == channels.dtype
    assert torch.equal(warped_channels[:, 0].bool(), warped_labels >= 1)
    assert torch.equal(warped_channels[:, 1].bool(), warped_labels >= 2)
    assert warped_channels[:, 1].sum() > 0  # the overlap survived


def _data(phantom_raw, tmp_path, *overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"data.root={phantom_raw}",
                "data.synthetic=null",
                f"data.cache_dir={tmp_path / 'prepared'}",
                "data.image_size=[32,32]",
                "data.num_workers=0",
                "data.splits_out=null",
                "paths.output_dir=unused",
                *overrides,
            ],
        )
    return hydra.utils.instantiate(cfg.data)


def test_device_cache_serves_the_cpu_paths_batches(phantom_raw, tmp_path):
    cpu = _data(phantom_raw, tmp_path, "augmentation=none")
    device = _data(phantom_raw, tmp_path, "augmentation=gpu", "data.cache_device=cuda")
    for datamodule in (cpu, device):
        datamodule.prepare_data()
        datamodule.setup("fit")
    assert isinstance(device.train_dataloader().dataset, CacheRows)
    expected = next(iter(cpu.val_dataloader()))
    rows = next(iter(device.val_dataloader()))
    assert set(rows) == {"row", "id"}
    # "cuda" held on the CPU here: the gathering is the same code on any device.
    gathered = device.device_path(rows, torch.device("cpu"), training=False)
    assert gathered["id"] == expected["id"]
    assert torch.equal(gathered["image"], expected["image"])
    assert torch.equal(gathered["mask"], expected["mask"])
    augmented = device.device_path(rows, torch.device("cpu"), training=True)
    assert augmented["image"].shape == expected["image"].shape


def test_device_cache_refuses_cpu_augmentation():
    with pytest.raises(ValueError, match="augmentation=gpu"):
        DevicePath.create("cuda", A.Compose([A.HorizontalFlip()]))
    with pytest.raises(ValueError, match="cpu or cuda"):
        DevicePath.create("tpu", None)
    assert DevicePath.create("cpu", A.Compose([A.HorizontalFlip()])) is None


@pytest.mark.parametrize("cache_device", ["cpu", "cuda"])
def test_training_step_with_gpu_augmentation(tiny_run, tmp_path, cache_device):
    # "cuda" runs on the CPU here (the cache goes where the model is); the validation-image
    # callback must find images, not the row numbers that loader carries.
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *tiny_run,
                "augmentation=gpu",
                f"data.cache_device={cache_device}",
                "trainer.fast_dev_run=true",
                f"paths.output_dir={tmp_path}",
            ],
        )
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss_step"])
    assert list(tmp_path.rglob("val_images/*.png"))
