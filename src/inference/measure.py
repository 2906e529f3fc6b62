"""One image in, its label map and biometry out: the network at the original size
(``predictor``) followed by the head measurement of the class set, where it has a head."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from src.biometry import Biometry, PixelSize, measure_class_set
from src.data.classes import ClassSet, class_set_for
from src.inference.checkpoint import RestoredModel
from src.inference.predictor import predict_labels


def head_class_set(class_names: Sequence[str]) -> ClassSet | None:
    """The registered class set of these names if it has a head to measure."""
    class_set = class_set_for(class_names)
    return class_set if class_set is not None and class_set.head_labels else None


def predict_biometry(
    model: RestoredModel,
    image: np.ndarray,
    *,
    pixel_size_mm: PixelSize = None,
    tta_flip: bool = False,
    rules: Mapping[str, Sequence[str]] | None = None,
    robust_biometry: bool = False,
) -> tuple[np.ndarray, Biometry | None]:
    """Labels (H, W) of one uint8 grey image and their biometry (None: no head found, or a
    class set without a head); apart from ``predict_image`` for callers that draw their own
    overlay (the viewer)."""
    labels = predict_labels(
        model.net,
        image,
        model.image_size,
        tta_flip=tta_flip,
        rules=rules,
        class_names=model.class_names,
    )
    return labels, measure_labels(labels, model.class_names, pixel_size_mm, robust=robust_biometry)


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
