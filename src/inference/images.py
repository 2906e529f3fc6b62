"""Image files for prediction: which files an input names, and each decoded as the model's
input (grey or RGB), with a clear error for a file that is not an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from src.data import images
from src.data.images import IMAGE_SUFFIXES


def list_inputs(input_path: str | Path) -> list[Path]:
    """One file, or the files of a folder (sorted; hidden files and sub-folders left out)."""
    path = Path(input_path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path} does not exist (expected an image or a folder)")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(f"input folder {path} holds no files (expected image files)")
    return files


def read_image(path: Path, in_channels: int = 1) -> np.ndarray:
    """An image file as a uint8 grey (H, W) or RGB (H, W, 3) image (``in_channels``, the
    model's); ValueError naming the file otherwise."""
    _check_image_name(str(path))
    return images.read_image(path, in_channels)


def _check_image_name(name: str) -> None:
    if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{name}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")


def decode_image(data: bytes, name: str, in_channels: int = 1) -> np.ndarray:
    """The bytes of an image file called ``name`` (a file, an upload) as a uint8 grey
    (H, W) or RGB (H, W, 3) image; ValueError naming it otherwise."""
    _check_image_name(name)
    return images.decode_image(data, name, in_channels)
