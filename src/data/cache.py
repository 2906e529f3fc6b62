"""Decoded-image cache: every image and mask of a prepared dir, resized once, as uint8 .npy.

Decoding a 959x661 PNG and resizing it costs far more than a training step's data needs, so
it is done once per (prepared dir, index.csv content, resolution, denoising filter) and
epochs read memory-mapped arrays. A prepared dir is never rewritten in place
(``prepared.write_prepared`` swaps whole folders), so the index.csv content identifies its
images; the cache lives inside it, so moving the prepared dir keeps its caches valid. Builds
are locked (``locked``), so concurrent runs build once and the others wait for and reuse the
result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import pandas as pd

from src.data.images import read_image
from src.data.prepared import build_dir_atomically, locked, read_index


class ImageFilter(Protocol):
    """What the cache needs of a despeckling filter (``src.denoise.classical``'s filters):
    uint8 (H, W) in and out, a ``name`` for the cache folder and a ``cache_key`` that
    changes with every parameter. A protocol, so the data layer does not import ``denoise``."""

    name: str

    @property
    def cache_key(self) -> str: ...

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


log = logging.getLogger(__name__)

# Bump when the cached arrays would come out differently from the same inputs.
# 2: masks resized with pixel centres aligned (INTER_NEAREST_EXACT), as the images are.
CACHE_FORMAT_VERSION = 2
IMAGES_FILE = "images.npy"
MASKS_FILE = "masks.npy"
IDS_FILE = "ids.json"  # image paths in row order


def cache_dir_for(
    prepared_dir: Path,
    image_size: tuple[int, int],
    denoise: ImageFilter | None = None,
    in_channels: int = 1,
) -> Path:
    """``<prepared>/cache/<H>x<W>[-<filter>]-<hash of format version, resolution, channels,
    the denoising filter's cache key and index.csv>``: each filter setting has its own cache.
    (Grey caches keep the key they had before channels existed.)"""
    height, width = image_size
    key = f"v{CACHE_FORMAT_VERSION}:{height}x{width}:"
    if in_channels != 1:
        key += f"c{in_channels}:"
    if denoise is not None:
        key += f"{denoise.cache_key}:"
    digest = hashlib.sha256(key.encode())
    digest.update((prepared_dir / "index.csv").read_bytes())
    name = f"{height}x{width}" + (f"-{denoise.name}" if denoise is not None else "")
    return prepared_dir / "cache" / f"{name}-{digest.hexdigest()[:12]}"


def resize_image(image: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Area interpolation when shrinking (no aliasing of speckle), linear when enlarging.
    (H, W) stays (H, W), (H, W, C) stays (H, W, C) (OpenCV would drop a channel axis of 1)."""
    height, width = image_size
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    return resized[..., None] if image.ndim == 3 and resized.ndim == 2 else resized


def resize_mask(mask: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Nearest neighbour, so a label map stays a label map, with pixel centres aligned as in
    ``resize_image`` (plain INTER_NEAREST shifts labels by up to half a pixel)."""
    height, width = image_size
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)


def load_resized(
    image_path: Path,
    mask_path: Path,
    image_size: tuple[int, int],
    *,
    num_classes: int,
    in_channels: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image (uint8 (H, W) grey or (H, W, C), ``src.data.images``) and its label
    mask, check them, resize both."""
    image = read_image(image_path, in_channels)
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise ValueError(f"cannot decode mask {mask_path}")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(
            f"mask {mask_path} is {mask.dtype} with shape {mask.shape}; "
            "expected a single-channel uint8 label map"
        )
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} "
            f"is {image.shape[1]}x{image.shape[0]}"
        )
    if mask.max() >= num_classes:
        raise ValueError(
            f"mask {mask_path} holds label {mask.max()}; expected labels 0..{num_classes - 1}"
        )
    return resize_image(image, image_size), resize_mask(mask, image_size)


def _write_arrays(
    out_dir: Path,
    prepared_dir: Path,
    rows: pd.DataFrame,
    image_size: tuple[int, int],
    num_classes: int,
    denoise: ImageFilter | None,
    in_channels: int,
) -> None:
    out_dir.mkdir()
    shape = (len(rows), *image_size)
    # Grey: (N, H, W) as ever; C channels: (N, H, W, C), channels last as the transforms take.
    image_shape = shape if in_channels == 1 else (*shape, in_channels)
    images = np.lib.format.open_memmap(out_dir / IMAGES_FILE, "w+", np.uint8, image_shape)
    masks = np.lib.format.open_memmap(out_dir / MASKS_FILE, "w+", np.uint8, shape)

    def fill(row: int) -> None:
        image, masks[row] = load_resized(
            prepared_dir / rows["image"].iat[row],
            prepared_dir / rows["mask"].iat[row],
            image_size,
            num_classes=num_classes,
            in_channels=in_channels,
        )
        # Denoised once here, at the network's input size, so it costs nothing per epoch;
        # src.inference.prestage.FilterLayer repeats it at eval/predict time.
        images[row] = image if denoise is None else denoise(image)

    # OpenCV releases the GIL while decoding and resizing, so threads use all cores.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(fill, range(len(rows))))
    images.flush()
    masks.flush()
    (out_dir / IDS_FILE).write_text(json.dumps(rows["image"].tolist()))


def build_cache(
    prepared_dir: Path,
    image_size: tuple[int, int],
    *,
    num_classes: int,
    denoise: ImageFilter | None = None,
    in_channels: int = 1,
) -> Path:
    """The cache folder for this resolution (and denoising filter, applied to every resized
    image; grey images only), built on first use (atomically, under a lock) and reused after."""
    prepared_dir = Path(prepared_dir)
    image_size = (int(image_size[0]), int(image_size[1]))
    if denoise is not None and in_channels != 1:
        raise ValueError(
            f"denoising filter {denoise.name}: the despeckling filters take grey images; "
            f"these have {in_channels} channels (use denoiser=none)"
        )
    rows = read_index(prepared_dir)
    target = cache_dir_for(prepared_dir, image_size, denoise, in_channels)
    with locked(target):
        if target.is_dir():  # complete: it was renamed into place after the build
            return target
        log.info(
            "caching %d images of %s at %dx%d%s",
            len(rows),
            prepared_dir,
            *image_size,
            f", denoised by {denoise.cache_key}" if denoise is not None else "",
        )
        return build_dir_atomically(
            target,
            lambda out: _write_arrays(
                out, prepared_dir, rows, image_size, num_classes, denoise, in_channels
            ),
        )


def open_cache(cache_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read-only memory maps of images (N, H, W) or (N, H, W, C) and masks (N, H, W) uint8,
    and the image ids in row order."""
    ids_path = Path(cache_dir) / IDS_FILE
    if not ids_path.is_file():
        raise FileNotFoundError(
            f"no complete image cache at {cache_dir}; build it with build_cache"
        )
    images = np.load(Path(cache_dir) / IMAGES_FILE, mmap_mode="r")
    masks = np.load(Path(cache_dir) / MASKS_FILE, mmap_mode="r")
    return images, masks, json.loads(ids_path.read_text())
