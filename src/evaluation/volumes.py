"""Scores of slices taken together: Dice per volume (all slices of a patient stacked) and
detection per slice (is there any foreground, and does the prediction say so).

Per-volume Dice is the LGG benchmark's published measure (Buda et al. 2019: "mean Dice per
patient"): a volume's slices pooled, 2 sum|P & T| / (sum|P| + sum|T|), so a large lesion's
slices weigh more than its thin edge slices, and empty slices count only through their false
positives. The mean of per-slice Dice over the same slices is a different number (it is the
per-image metric). Nothing here knows a dataset: a data config with ``data.volume_column`` turns
it on, and the per-image rows of the original-size evaluation carry the pixel counts
(``slice_counts``), so these are sums over ``per_image.csv`` and can be recomputed from it.
Hand-written: the pooled counts are sums of three numbers per slice, no library keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

VOLUME_DICE_RULE = (
    "per volume and class: 2 sum|P&T| / (sum|P| + sum|T|) over all its slices at original size; "
    "a volume with the class in neither truth nor prediction -> NaN (null), left out of the "
    "class mean; dice_mean = nanmean over the foreground class means."
)
# A predicted slice is positive from this many foreground pixels on (at the original size):
# 1 = any predicted pixel, the strict reading; raise it to ignore specks.
MIN_AREA_PX = 1
DETECTION_RULE = (
    "per slice and class: truth positive if its mask has any pixel of the class; prediction "
    "positive if it has at least min_area_px pixels of it. sensitivity = TP / (TP + FN), "
    "specificity = TN / (TN + FP); NaN (null) without positive (negative) slices."
)
COUNTS = ("pixels_true", "pixels_pred", "pixels_both")


def slice_counts(name: str, truth: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """Per-image columns of class ``name`` from its boolean truth and predicted masks:
    ``pixels_true_<name>``, ``pixels_pred_<name>``, ``pixels_both_<name>``."""
    truth, predicted = np.asarray(truth, bool), np.asarray(predicted, bool)
    return {
        f"pixels_true_{name}": int(truth.sum()),
        f"pixels_pred_{name}": int(predicted.sum()),
        f"pixels_both_{name}": int((truth & predicted).sum()),
    }


def pooled_dice(true: float, pred: float, both: float) -> float:
    """Dice of pooled counts; NaN when the class is in neither."""
    return 2 * both / (true + pred) if true + pred else math.nan


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def per_volume(rows: Sequence[Mapping], volume_column: str, foreground: Sequence[str]) -> dict:
    """Dice per volume (``rows`` grouped by ``volume_column``) and its mean over volumes:
    ``{"column", "rule", "num_volumes", "mean": {"dice_<class>", "dice_mean"}, "volumes":
    {volume: {"slices", "dice_<class>", "pixels_true_<class>", "pixels_pred_<class>"}}}``."""
    volumes: dict[str, dict] = {}
    for row in rows:
        if volume_column not in row:
            raise KeyError(
                f"per-volume scores: image {row.get('id')} has no column {volume_column!r} "
                "(data.volume_column names an index.csv column)"
            )
        totals = volumes.setdefault(str(row[volume_column]), {"slices": 0})
        totals["slices"] += 1
        for name in foreground:
            for count in COUNTS:
                key = f"{count}_{name}"
                totals[key] = totals.get(key, 0) + int(row[key])
    for totals in volumes.values():
        for name in foreground:
            totals[f"dice_{name}"] = pooled_dice(*(totals[f"{count}_{name}"] for count in COUNTS))
    class_means = {
        f"dice_{name}": _nanmean([v[f"dice_{name}"] for v in volumes.values()])
        for name in foreground
    }
    return {
        "column": volume_column,
        "rule": VOLUME_DICE_RULE,
        "num_volumes": len(volumes),
        "mean": class_means | {"dice_mean": _nanmean(list(class_means.values()))},
        "volumes": volumes,
    }


def detection(
    rows: Sequence[Mapping], foreground: Sequence[str], min_area_px: int = MIN_AREA_PX
) -> dict:
    """Slice-level detection per class: ``{"rule", "min_area_px", "per_class": {class:
    {"tp", "fn", "tn", "fp", "sensitivity", "specificity"}}}``."""
    if min_area_px < 1:
        raise ValueError(f"min_area_px={min_area_px}: expected at least 1 pixel")
    per_class = {}
    for name in foreground:
        truth = np.array([int(row[f"pixels_true_{name}"]) > 0 for row in rows], bool)
        said = np.array([int(row[f"pixels_pred_{name}"]) >= min_area_px for row in rows], bool)
        tp, fn = int((truth & said).sum()), int((truth & ~said).sum())
        tn, fp = int((~truth & ~said).sum()), int((~truth & said).sum())
        per_class[name] = {
            "tp": tp,
            "fn": fn,
            "tn": tn,
            "fp": fp,
            "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
            "specificity": tn / (tn + fp) if tn + fp else math.nan,
        }
    return {"rule": DETECTION_RULE, "min_area_px": min_area_px, "per_class": per_class}


def volume_sections(
    rows: Sequence[Mapping], foreground: Sequence[str], volume_column: str | None
) -> dict:
    """summary.json's ``per_volume`` and ``detection`` sections for data with volumes
    (``data.volume_column``); none for independent 2D images."""
    if not volume_column:
        return {}
    return {
        "per_volume": per_volume(rows, volume_column, foreground),
        "detection": detection(rows, foreground),
    }
