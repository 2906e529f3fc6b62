"""One image in, its label map and biometry out: the network at the original size
(``predictor``) followed by the head measurement of the class set, where it has a head, and
the measurement's quality score (``quality``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from src.biometry import Biometry, PixelSize, measure_class_set
from src.data.classes import head_class_set
from src.inference.checkpoint import RestoredModel
from src.inference.predictor import labels_from_logits, predict_views, tta_views
from src.inference.quality import QUALITY_VIEWS, hc_spread, is_flagged


class Measured(NamedTuple):
    """One image's labels (H, W), biometry (None: no head found, or a class set without a
    head), quality score (NaN without a head; see ``src.inference.quality``) and flag (None
    without a calibrated threshold)."""

    labels: np.ndarray
    biometry: Biometry | None
    quality_score: float
    flagged: bool | None


def predict_biometry(
    model: RestoredModel,
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
    logits = predict_views(model.net, image, model.image_size, views)
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
