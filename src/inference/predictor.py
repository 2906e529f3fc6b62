"""One image in, logits or labels out at the image's ORIGINAL size.

The image is prepared exactly as for training (resized like the cache, scaled like the
batches), and the logits are interpolated back before the argmax, so a label is decided at
the resolution it is scored and measured at. ``predict_views`` runs several views of the image
(mirrored, zoomed out) in one batch, each brought back to the original frame: their mean is
test-time augmentation, their disagreement a quality signal (``src.inference.quality``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.data.cache import resize_image
from src.data.classes import to_bitmask
from src.data.images import image_tensor
from src.inference.postprocess import postprocess
from src.metrics import decide


@dataclass(frozen=True)
class View:
    """One way of showing the image to the network: mirrored left-right and/or zoomed out
    (``zoom`` < 1: the network input shrunk by that factor, centred on a black border), the
    logits brought back to the image's own frame."""

    flip: bool = False
    zoom: float = 1.0


IDENTITY = View()
FLIP = View(flip=True)


@torch.no_grad()
def predict_views(
    net: nn.Module, image: np.ndarray, image_size: tuple[int, int], views: Sequence[View]
) -> torch.Tensor:
    """float32 logits (V, K, H, W) of a uint8 (H, W) grey or (H, W, C) image, one per view,
    each at the image's original H x W and in its frame; the views run as one batch."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"expected a uint8 (H, W) or (H, W, C) image, got {image.dtype} {image.shape}"
        )
    height, width = image_size
    device = next(net.parameters()).device
    resized = resize_image(image, tuple(image_size))
    # Scaled and laid out as src.data.datamodule.to_sample does for training batches.
    base = image_tensor(resized)[None].to(device)
    inputs, boxes = [], []
    for view in views:
        x = base.flip(-1) if view.flip else base
        box = (0, 0, height, width)
        if view.zoom != 1.0:
            h, w = round(height * view.zoom), round(width * view.zoom)
            top, left = (height - h) // 2, (width - w) // 2
            inner = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = F.pad(inner, (left, width - w - left, top, height - h - top))
            box = (top, left, h, w)
        inputs.append(x)
        boxes.append(box)
    logits = net(torch.cat(inputs)).float()
    out = []
    for view, (top, left, h, w), view_logits in zip(views, boxes, logits, strict=True):
        view_logits = view_logits[None, :, top : top + h, left : left + w]
        view_logits = F.interpolate(
            view_logits, size=image.shape[:2], mode="bilinear", align_corners=False
        )
        out.append(view_logits.flip(-1) if view.flip else view_logits)
    return torch.cat(out).cpu()


def tta_views(tta_flip: bool) -> tuple[View, ...]:
    """The views whose mean logits are the prediction: the image, and its mirror with TTA."""
    return (IDENTITY, FLIP) if tta_flip else (IDENTITY,)


def predict_logits(
    net: nn.Module, image: np.ndarray, image_size: tuple[int, int], *, tta_flip: bool = False
) -> torch.Tensor:
    """float32 logits (K, H, W) for a uint8 (H, W) grey or (H, W, C) image, at its original
    H x W.

    ``tta_flip``: the mean of the logits of the image and of its horizontal flip (flipped
    back)."""
    return predict_views(net, image, image_size, tta_views(tta_flip)).mean(0)


def labels_from_logits(
    logits: torch.Tensor,
    *,
    rules: Mapping[str, Sequence[str]] | None = None,
    class_names: Sequence[str] | None = None,
    multilabel: bool = False,
) -> np.ndarray:
    """uint8 (H, W) label map of (K, H, W) logits: the argmax, then the per-class
    post-processing ``rules`` (``postprocess``; needs ``class_names``). ``multilabel``: the
    bitmask map of the classes whose sigmoid is > 0.5 (``decide``; the label-map rules do not
    apply to it)."""
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
    """uint8 (H, W) label map at the original size: ``labels_from_logits`` of
    ``predict_logits``."""
    logits = predict_logits(net, image, image_size, tta_flip=tta_flip)
    return labels_from_logits(logits, rules=rules, class_names=class_names, multilabel=multilabel)
