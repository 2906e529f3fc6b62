"""One image in, its label map and biometry out: the network at the original size (a torch
checkpoint's ``RestoredModel`` or an exported ONNX package, ``package``) followed by the head
measurement of the class set, where it has a head, and the measurement's quality score
(``quality``). No torch here: a deployment measures with the ONNX package alone."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from src.biometry import Biometry, PixelSize, measure_class_set
from src.data.classes import head_class_set
from src.inference.quality import QUALITY_VIEWS, hc_spread, is_flagged
from src.inference.views import View, labels_from_logits, tta_views


class Segmenter(Protocol):
    """What predicting and measuring need of a model: its classes, input size and channels,
    where it came from, and its logits of an image's views at the image's original size,
    float32 (V, K, H, W) (a checkpoint's ``RestoredModel``, a package's ``OnnxModel``)."""

    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    in_channels: int
    checkpoint_path: Path

    def view_logits(self, image: np.ndarray, views: Sequence[View]) -> np.ndarray: ...


class Measured(NamedTuple):
    """One image's labels (H, W), biometry (None: no head found, or a class set without a
    head), quality score (NaN without a head; see ``src.inference.quality``) and flag (None
    without a calibrated threshold)."""

    labels: np.ndarray
    biometry: Biometry | None
    quality_score: float
    flagged: bool | None


def predict_biometry(
    model: Segmenter,
    image: np.ndarray,
    *,
    pixel_size_mm: PixelSize = None,
    tta_flip: bool = False,
    rules: Mapping[str, Sequence[str]] | None = None,
    robust_biometry: bool = False,
    quality_threshold: float | None = None,
) -> Measured:
    """The network on one uint8 grey image at its original size, post-processed, measured,
    and its quality score from the quality views (run in the same batch as the prediction's
    own views); apart from ``predict_image`` for callers that draw their own overlay (the
    viewer)."""
    measure = head_class_set(model.class_names) is not None
    prediction_views = tta_views(tta_flip)
    views = QUALITY_VIEWS if measure else prediction_views
    logits = model.view_logits(image, views)
    labels = labels_from_logits(
        logits[: len(prediction_views)].mean(0), rules=rules, class_names=model.class_names
    )
    biometry = measure_labels(labels, model.class_names, pixel_size_mm, robust=robust_biometry)
    score = math.nan
    if measure:
        view_labels = [labels_from_logits(v) for v in logits]
        score = hc_spread(view_labels, model.class_names, pixel_size_mm, rules)
    return Measured(labels, biometry, score, is_flagged(score, quality_threshold))


def measure_labels(
    labels: np.ndarray,
    class_names: Sequence[str],
    pixel_size_mm: PixelSize = None,
    *,
    robust: bool = False,
) -> Biometry | None:
    """The biometry of a label map of these classes: None when it has no head, or when the
    class set has no head to measure."""
    class_set = head_class_set(class_names)
    return class_set and measure_class_set(labels, class_set, pixel_size_mm, robust=robust)
