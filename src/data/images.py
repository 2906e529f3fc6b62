"""THE decoding of an input image file: uint8 (H, W) grey or (H, W, C) channels-last.

One function for every place that reads an image (the array cache, the original-size
evaluation, ``src.predict``), so a network sees the same pixels in training and at inference.
The number of channels is the data's (``data.in_channels``, a reader's ``in_channels``), never
guessed from the file: a grey network fed a colour PNG gets it converted to grey, as before.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# Channel counts an image file can hold. More channels (2.5D stacks of neighbouring slices)
# are stacked from single-channel files after decoding, not read from one file.
FILE_CHANNELS = (1, 3)
# The image file types every reader of user files (src.predict, the viewer, denoising pairs)
# takes: those OpenCV decodes, TIFF included (the LGG MRI slices).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def decode_image(data: bytes, name: str, in_channels: int = 1) -> np.ndarray:
    """The bytes of an image file called ``name`` as uint8 (H, W) (``in_channels=1``, grey) or
    (H, W, 3) in RGB order (``in_channels=3``; OpenCV decodes BGR, so it is swapped here)."""
    if in_channels not in FILE_CHANNELS:
        raise ValueError(
            f"{name}: an image file is read with 1 (grey) or 3 (RGB) channels, not "
            f"{in_channels}; stack more channels from single-channel files after reading"
        )
    flag = cv2.IMREAD_GRAYSCALE if in_channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if image is None:
        raise ValueError(f"{name}: cannot be decoded as an image (corrupt or not an image file)")
    return image if in_channels == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: Path, in_channels: int = 1) -> np.ndarray:
    """An image file as ``decode_image`` returns it; ValueError naming the file otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror})") from error
    return decode_image(data, str(path), in_channels)


def image_array(image: np.ndarray) -> np.ndarray:
    """A uint8 (H, W) or (H, W, C) image as the network's input: float32 in [0, 1], (1, H, W)
    or (C, H, W). The one scaling of training batches and of inference (torch or ONNX)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"expected a uint8 (H, W) or (H, W, C) image, got {image.dtype} {image.shape}"
        )
    channels_first = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    return channels_first.astype(np.float32) / np.float32(255.0)


def write_image(path: Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W) grey or (H, W, 3) RGB image as PNG, in RGB order on disk (the
    inverse of ``read_image``)."""
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
    ):
        raise ValueError(
            f"{path}: expected uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}"
        )
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    Path(path).write_bytes(encoded.tobytes())
