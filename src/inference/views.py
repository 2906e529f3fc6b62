"""The views of an image a network is shown (the image, its mirror, zoomed out) and the label
map of logits: numpy only, so that the torch predictor (``predictor``) and the ONNX one
(``package``) share them, and a deployment needs no PyTorch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from src.data.classes import to_bitmask
from src.inference.postprocess import postprocess


@dataclass(frozen=True)
class View:
    """One way of showing the image to the network: mirrored left-right and/or zoomed out
    (``zoom`` < 1: the network input shrunk by that factor, centred on a black border), the
    logits brought back to the image's own frame."""

    flip: bool = False
    zoom: float = 1.0

    def box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the image inside a network input of height x width."""
        if self.zoom == 1.0:
            return 0, 0, height, width
        h, w = round(height * self.zoom), round(width * self.zoom)
        return (height - h) // 2, (width - w) // 2, h, w


IDENTITY = View()
FLIP = View(flip=True)


def tta_views(tta_flip: bool) -> tuple[View, ...]:
    """The views whose mean logits are the prediction: the image, and its mirror with TTA."""
    return (IDENTITY, FLIP) if tta_flip else (IDENTITY,)


def _resize_channels(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, h, w) float32 resized bilinearly to (C, height, width) with half-pixel centres:
    OpenCV's INTER_LINEAR, which is torch's ``interpolate(bilinear, align_corners=False)``."""
    resized = [cv2.resize(c, (width, height), interpolation=cv2.INTER_LINEAR) for c in array]
    return np.stack(resized)


def view_inputs(base: np.ndarray, views: Sequence[View]) -> np.ndarray:
    """The network's input batch (V, C, H, W) of one scaled input (C, H, W), one per view."""
    _, height, width = base.shape
    batch = []
    for view in views:
        x = base[:, :, ::-1] if view.flip else base
        top, left, h, w = view.box(height, width)
        if (h, w) != (height, width):
            inner = _resize_channels(np.ascontiguousarray(x), h, w)
            x = np.zeros_like(base)
            x[:, top : top + h, left : left + w] = inner
        batch.append(x)
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32)


def logits_back(logits: np.ndarray, views: Sequence[View], shape: tuple[int, int]) -> np.ndarray:
    """The logits (V, K, H, W) of ``view_inputs`` brought back to the image's own frame and
    original size ``shape``: float32 (V, K, height, width)."""
    height, width = logits.shape[-2:]
    out = []
    for view, view_logits in zip(views, logits, strict=True):
        top, left, h, w = view.box(height, width)
        view_logits = _resize_channels(view_logits[:, top : top + h, left : left + w], *shape)
        out.append(view_logits[:, :, ::-1] if view.flip else view_logits)
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def labels_from_logits(
    logits: np.ndarray,
    *,
    rules: Mapping[str, Sequence[str]] | None = None,
    class_names: Sequence[str] | None = None,
    multilabel: bool = False,
) -> np.ndarray:
    """uint8 (H, W) label map of (K, H, W) logits: the argmax, then the per-class
    post-processing ``rules`` (``postprocess``; needs ``class_names``). ``multilabel``: the
    bitmask map of the classes whose sigmoid is > 0.5, i.e. logit > 0 (as
    ``src.metrics.decide``; the label-map rules do not apply to it)."""
    logits = np.asarray(logits)
    if multilabel:
        if rules:
            raise ValueError("post-processing rules act on label maps, not multi-label masks")
        return to_bitmask(logits > 0)
    labels = logits.argmax(0).astype(np.uint8)
    if rules:
        if class_names is None:
            raise ValueError("labels_from_logits: post-processing rules need class_names")
        labels = postprocess(labels, rules, class_names)
    return labels
