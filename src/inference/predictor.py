"""One image in, logits or labels out at the image's ORIGINAL size.

The image is prepared exactly as for training (resized like the cache, scaled like the
batches), and the logits are interpolated back before the argmax, so a label is decided at
the resolution it is scored and measured at. ``predict_views`` runs several views of the image
(mirrored, zoomed out; ``views``) in one batch, each brought back to the original frame:
their mean is test-time augmentation, their disagreement a quality signal
(``src.inference.quality``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.data.cache import resize_image
from src.data.images import image_array
from src.inference.views import View, labels_from_logits, tta_views


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
    base = torch.from_numpy(image_array(resized))[None].to(device)
    inputs = []
    for view in views:
        x = base.flip(-1) if view.flip else base
        top, left, h, w = view.box(height, width)
        if view.zoom != 1.0:
            inner = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = F.pad(inner, (left, width - w - left, top, height - h - top))
        inputs.append(x)
    logits = net(torch.cat(inputs)).float()
    out = []
    for view, view_logits in zip(views, logits, strict=True):
        top, left, h, w = view.box(height, width)
        view_logits = view_logits[None, :, top : top + h, left : left + w]
        view_logits = F.interpolate(
            view_logits, size=image.shape[:2], mode="bilinear", align_corners=False
        )
        out.append(view_logits.flip(-1) if view.flip else view_logits)
    return torch.cat(out).cpu()


def predict_logits(
    net: nn.Module, image: np.ndarray, image_size: tuple[int, int], *, tta_flip: bool = False
) -> torch.Tensor:
    """float32 logits (K, H, W) for a uint8 (H, W) grey or (H, W, C) image, at its original
    H x W.

    ``tta_flip``: the mean of the logits of the image and of its horizontal flip (flipped
    back)."""
    return predict_views(net, image, image_size, tta_views(tta_flip)).mean(0)


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
    logits = predict_logits(net, image, image_size, tta_flip=tta_flip).numpy()
    return labels_from_logits(logits, rules=rules, class_names=class_names, multilabel=multilabel)
