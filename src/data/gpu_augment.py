"""The GPU data path: the uint8 cache held on the device, and augmentation of whole batches.

With a fast training step (a GPU at bf16, compiled), CPU workers running albumentations per
image can become the limit (``python -m src.bench`` times the loader alone against the step).
Two settings move the work to the device; each works without the other:

- ``augmentation=gpu`` (``GpuAugment``): flip, affine, brightness/contrast, gamma and speckle
  applied to the batch after it reaches the device, with the parameters and meaning of
  conf/augmentation/basic.yaml (albumentations) and ``src.data.transforms.SpeckleNoise``; every
  image draws its own parameters. Differences: values stay float (the CPU path rounds to uint8
  after each transform), and speckle is blurred with a truncated Gaussian (4 sigma, reflected
  edges) as OpenCV's float blur does.
- ``data.cache_device=cuda`` (``DevicePath``): the whole uint8 array cache (images and label
  maps; the memory it takes is N x H x W x (C + 1) bytes) is copied to the device once; loaders
  then carry only row numbers and ids, and each batch is gathered on the device.

Albumentations has no batched GPU mode and kornia is not a dependency, so the few transforms
are written here (torch's ``affine_grid``/``grid_sample`` do the geometry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from src.data.cache import open_cache

_DB_PER_NEPER = 10 / math.log(10)


def _uniform(low: float, high: float, n: int, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def _chosen(p: float, n: int, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


# ------------------------------------------------------------------- functional transforms


def hflip(image: torch.Tensor, mask: torch.Tensor, chosen: torch.Tensor):
    """Left-right flip of the chosen images (B,) and their masks."""
    c = chosen.view(-1, *([1] * (image.dim() - 1)))
    image = torch.where(c, image.flip(-1), image)
    m = chosen.view(-1, *([1] * (mask.dim() - 1)))
    return image, torch.where(m, mask.flip(-1), mask)


def affine_matrices(
    height: int,
    width: int,
    angle_deg: torch.Tensor,
    scale_x: torch.Tensor,
    scale_y: torch.Tensor,
    translate_x: torch.Tensor,
    translate_y: torch.Tensor,
) -> torch.Tensor:
    """(B, 3, 3) pixel-coordinate maps as albumentations' Affine builds them: scale and rotate
    about the image centre ((W - 1) / 2, (H - 1) / 2), then shift by the translation (fractions
    of the width and height, truncated to whole pixels). A positive angle turns the image
    counter-clockwise on screen."""
    n, device = angle_deg.shape[0], angle_deg.device
    theta = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    m = torch.zeros(n, 3, 3, device=device)
    # R(-theta) in image coordinates (y down) is counter-clockwise on screen, times S.
    m[:, 0, 0], m[:, 0, 1] = cos * scale_x, sin * scale_y
    m[:, 1, 0], m[:, 1, 1] = -sin * scale_x, cos * scale_y
    # albumentations shifts by whole pixels, truncated (int()).
    m[:, 0, 2] = cx - m[:, 0, 0] * cx - m[:, 0, 1] * cy + torch.trunc(translate_x * width)
    m[:, 1, 2] = cy - m[:, 1, 0] * cx - m[:, 1, 1] * cy + torch.trunc(translate_y * height)
    m[:, 2, 2] = 1
    return m


def warp(image: torch.Tensor, mask: torch.Tensor, matrices: torch.Tensor, chosen: torch.Tensor):
    """Apply pixel maps (B, 3, 3) to the chosen images (bilinear) and masks (nearest); outside
    the image both become 0 (background), as basic.yaml's border settings say."""
    batch, _, height, width = image.shape
    device = image.device
    # pixel index -> grid_sample's [-1, 1] (align_corners=False: pixel centres at (2i+1)/n - 1)
    to_unit = torch.tensor(
        [[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]],
        device=device,
    )
    identity = torch.eye(3, device=device).expand(batch, 3, 3)
    maps = torch.where(chosen.view(-1, 1, 1), matrices, identity)
    # For each output pixel, where to sample: the inverse map, in unit coordinates.
    theta = (to_unit @ torch.linalg.inv(maps) @ torch.linalg.inv(to_unit))[:, :2]
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # A label map (B, H, W) is warped as one channel; multi-label masks (B, K, H, W) channel by
    # channel, so overlapping classes stay overlapping.
    channels = mask.float() if mask.dim() == 4 else mask.unsqueeze(1).float()
    labels = F.grid_sample(
        channels, grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    labels = labels.round().to(mask.dtype)
    return warped, labels if mask.dim() == 4 else labels.squeeze(1)


def brightness_contrast(
    image: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor:
    """albumentations' RandomBrightnessContrast (brightness by max): ``alpha x + beta`` on
    [0, 1] images, clipped."""
    alpha = torch.where(chosen, alpha, torch.ones_like(alpha)).view(-1, 1, 1, 1)
    beta = torch.where(chosen, beta, torch.zeros_like(beta)).view(-1, 1, 1, 1)
    return (image * alpha + beta).clamp_(0, 1)


def gamma(image: torch.Tensor, exponent: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """albumentations' RandomGamma: ``x ** gamma`` on [0, 1] images."""
    exponent = torch.where(chosen, exponent, torch.ones_like(exponent)).view(-1, 1, 1, 1)
    return image.clamp(min=0).pow(exponent)


def _gaussian_blur(field: torch.Tensor, sigma_x: float, sigma_y: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W), reflected edges, 4 sigma wide."""
    for sigma, dim in ((sigma_x, -1), (sigma_y, -2)):
        radius = max(1, math.ceil(4 * sigma))
        radius = min(radius, field.shape[dim] - 1)
        offsets = torch.arange(-radius, radius + 1, device=field.device, dtype=field.dtype)
        kernel = torch.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
        kernel = kernel / kernel.sum()
        if dim == -1:
            padded = F.pad(field, (radius, radius, 0, 0), mode="reflect")
            field = F.conv2d(padded, kernel.view(1, 1, 1, -1))
        else:
            padded = F.pad(field, (0, 0, radius, radius), mode="reflect")
            field = F.conv2d(padded, kernel.view(1, 1, -1, 1))
    return field


def speckle(
    image: torch.Tensor,
    looks: torch.Tensor,
    chosen: torch.Tensor,
    grain: Sequence[float],
    dynamic_range_db: float,
) -> torch.Tensor:
    """``src.data.transforms.SpeckleNoise`` on a batch: echo power times a gamma speckle of
    ``looks`` looks (each image its own count), blurred by the point-spread function (``grain``
    x width along and across the beam), unit geometric mean, added in decibels to the
    log-compressed grey; zero pixels (outside the fan) stay zero."""
    batch, _, height, width = image.shape
    max_looks = int(looks.max())
    axial, lateral = (fraction * width for fraction in grain)
    # Every look's two field components blurred in one call (one kernel launch per axis).
    fields = torch.randn(batch * max_looks * 2, 1, height, width, device=image.device)
    fields = _gaussian_blur(fields, lateral, axial).view(batch, max_looks, 2, height, width)
    looks_power = fields.pow(2).sum(dim=2)  # (B, L, H, W): |complex field|^2
    looks_power = looks_power / looks_power.mean(dim=(2, 3), keepdim=True)
    used = torch.arange(max_looks, device=image.device).view(1, -1, 1, 1) < looks.view(-1, 1, 1, 1)
    power = (looks_power * used).sum(dim=1, keepdim=True)
    n = looks.view(-1, 1, 1, 1).float()
    log_bias = torch.special.digamma(n) - torch.log(n)  # E[ln power] of the gamma distribution
    speckle_db = _DB_PER_NEPER * (torch.log((power / n).clamp(min=1e-12)) - log_bias)
    out = (image + speckle_db / dynamic_range_db).clamp(0, 1)
    out = torch.where(image == 0, image, out)
    return torch.where(chosen.view(-1, 1, 1, 1), out, image)


# ----------------------------------------------------------------------------- the module


class GpuAugment(nn.Module):
    """Batched augmentation on the batch's device; each part a mapping of its options with a
    probability ``p`` (None: left out). Order: speckle (in the scanner's frame, as in
    conf/augmentation/ultrasound.yaml), flip, affine, brightness/contrast, gamma.

    ``affine``: ``scale``, ``translate_percent``, ``rotate`` ranges (x and y scale and shift
    drawn apart, as albumentations' Affine with ``keep_ratio=False``); ``brightness_contrast``:
    ``brightness_limit``, ``contrast_limit``; ``gamma``: ``gamma_limit`` (percent);
    ``speckle``: ``looks``, ``grain``, ``dynamic_range_db``.
    """

    def __init__(
        self,
        flip_p: float = 0.5,
        affine: Mapping | None = None,
        brightness_contrast: Mapping | None = None,
        gamma: Mapping | None = None,
        speckle: Mapping | None = None,
    ):
        super().__init__()
        self.flip_p = flip_p
        self.affine = dict(affine) if affine else None
        self.brightness_contrast = dict(brightness_contrast) if brightness_contrast else None
        self.gamma = dict(gamma) if gamma else None
        self.speckle = dict(speckle) if speckle else None

    @torch.no_grad()
    def forward(self, image: torch.Tensor, mask: torch.Tensor):
        """``image`` (B, C, H, W) float in [0, 1], ``mask`` (B, H, W) labels or (B, K, H, W)
        0/1 channels (multi-label data)."""
        n, device = image.shape[0], image.device
        height, width = image.shape[-2:]
        if self.speckle:
            s = self.speckle
            looks = torch.randint(s["looks"][0], s["looks"][1] + 1, (n,), device=device)
            image = speckle(
                image, looks, _chosen(s["p"], n, device), s["grain"], s["dynamic_range_db"]
            )
        if self.flip_p:
            image, mask = hflip(image, mask, _chosen(self.flip_p, n, device))
        if self.affine:
            a = self.affine
            matrices = affine_matrices(
                height,
                width,
                _uniform(*a["rotate"], n, device),
                _uniform(*a["scale"], n, device),
                _uniform(*a["scale"], n, device),
                _uniform(*a["translate_percent"], n, device),
                _uniform(*a["translate_percent"], n, device),
            )
            image, mask = warp(image, mask, matrices, _chosen(a["p"], n, device))
        if self.brightness_contrast:
            b = self.brightness_contrast
            contrast, brightness = b["contrast_limit"], b["brightness_limit"]
            image = brightness_contrast(
                image,
                1 + _uniform(-contrast, contrast, n, device),
                _uniform(-brightness, brightness, n, device),
                _chosen(b["p"], n, device),
            )
        if self.gamma:
            g = self.gamma
            low, high = g["gamma_limit"]
            image = gamma(image, _uniform(low, high, n, device) / 100, _chosen(g["p"], n, device))
        return image, mask


# ------------------------------------------------------------------------ the device cache


class CacheRows(Dataset):
    """What a loader carries when the cache is on the device: a row number and an id."""

    def __init__(self, rows: Sequence[int], ids: Sequence[str]):
        if any(not isinstance(row, int) for row in rows):
            raise ValueError(
                "data.cache_device=cuda serves one cache row per image: 2.5D context "
                "(data.context_slices > 0) needs data.cache_device=cpu"
            )
        self.rows, self.ids = list(rows), list(ids)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"row": self.rows[i], "id": self.ids[i]}


class DevicePath:
    """The DataModule's device-side step (``on_after_batch_transfer``): gather batches from the
    cache held on the device (``cache_device`` other than cpu) and augment training batches
    with a ``GpuAugment``. ``None`` from ``create`` when neither is asked for."""

    def __init__(self, cache_device: str, augment: GpuAugment | None):
        self.cache_device = cache_device
        self.augment = augment
        self._arrays: dict[Path, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def create(cls, cache_device: str, train_transform) -> DevicePath | None:
        if cache_device not in ("cpu", "cuda") and not cache_device.startswith("cuda:"):
            raise ValueError(f"data.cache_device must be cpu or cuda, got {cache_device!r}")
        augment = train_transform if isinstance(train_transform, GpuAugment) else None
        if cache_device != "cpu" and train_transform is not None and augment is None:
            raise ValueError(
                "data.cache_device=cuda keeps the images on the GPU, where albumentations "
                "cannot reach them: use augmentation=gpu (or augmentation=none)"
            )
        if cache_device == "cpu" and augment is None:
            return None
        return cls(cache_device, augment)

    @property
    def on_device(self) -> bool:
        return self.cache_device != "cpu"

    def loader_dataset(self, dataset) -> Dataset:
        """What the loader of a split iterates: row numbers when the cache is on the device,
        else the dataset (augmented later, on the device, if at all)."""
        if not self.on_device:
            return dataset
        if dataset.multilabel_classes is not None:
            raise ValueError(
                "data.cache_device=cuda serves label maps; multi-label (bitmask) data needs "
                "data.cache_device=cpu"
            )
        self._cache_dir = dataset.cache_dir  # every split's rows index the same cache
        return CacheRows(dataset.rows, dataset.ids)

    def _device_arrays(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache's images (N, C, H, W) and masks (N, H, W), uint8, copied once."""
        if self._cache_dir not in self._arrays:
            images, masks, _ = open_cache(self._cache_dir)
            images = torch.from_numpy(np.array(images))  # read once from the memory map
            images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
            self._arrays[self._cache_dir] = (
                images.contiguous().to(device),
                torch.from_numpy(np.array(masks)).to(device),
            )
        return self._arrays[self._cache_dir]

    def __call__(self, batch: dict, device: torch.device, training: bool) -> dict:
        if "row" in batch:
            images, masks = self._device_arrays(device)
            rows = batch["row"].to(device)
            batch = {
                "image": images[rows].float().div_(255),
                "mask": masks[rows].long(),
                "id": batch["id"],
            }
        if training and self.augment is not None:
            batch["image"], batch["mask"] = self.augment(batch["image"], batch["mask"])
        return batch
