"""One image in, logits or labels out at the image's ORIGINAL size.

The image is prepared exactly as for training (resized like the cache, scaled like the
batches), and the logits are interpolated back before the argmax, so a label is decided at
the resolution it is scored and measured at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.data.cache import resize_image
from src.data.classes import to_bitmask
from src.data.images import image_tensor
from src.inference.postprocess import postprocess
from src.metrics import decide


@torch.no_grad()
def predict_logits(
    net: nn.Module, image: np.ndarray, image_size: tuple[int, int], *, tta_flip: bool = False
) -> torch.Tensor:
    """float32 logits (K, H, W) for a uint8 (H, W) grey or (H, W, C) image, at its original
    H x W.

    ``tta_flip``: the mean of the logits of the image and of its horizontal flip (flipped
    back)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"expected a uint8 (H, W) or (H, W, C) image, got {image.dtype} {image.shape}"
        )
    device = next(net.parameters()).device
    resized = resize_image(image, tuple(image_size))
    # Scaled and laid out as src.data.datamodule.to_sample does for training batches.
    batch = image_tensor(resized)[None].to(device)
    if tta_flip:
        batch = torch.cat([batch, batch.flip(-1)])
    logits = net(batch).float()
    if tta_flip:
        logits = (logits[:1] + logits[1:].flip(-1)) / 2
    logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].cpu()


def predict_labels(
    net: nn.Module,
    image: np.ndarray,
    image_size: tuple[int, int],
    *,
    tta_flip: bool = False,
    rules: Mapping[str, Sequence[str]] | None = None,
    class_names: Sequence[str] | None = None,
    multilabel: bool = False,
) -> np.ndarray:
    """uint8 (H, W) label map at the original size: argmax of ``predict_logits``, then the
    per-class post-processing ``rules`` (``postprocess``; needs ``class_names``).
    ``multilabel``: the bitmask map of the classes whose sigmoid is > 0.5 (``decide``; the
    label-map rules do not apply to it)."""
    logits = predict_logits(net, image, image_size, tta_flip=tta_flip)
    if multilabel:
        if rules:
            raise ValueError("post-processing rules act on label maps, not multi-label masks")
        return to_bitmask(decide(logits[None], multilabel=True)[0].numpy())
    labels = logits.argmax(0).numpy().astype(np.uint8)
    if rules:
        if class_names is None:
            raise ValueError("predict_labels: post-processing rules need class_names")
        labels = postprocess(labels, rules, class_names)
    return labels
