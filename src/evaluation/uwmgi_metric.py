"""The UW-Madison GI Tract Image Segmentation competition's score (Kaggle 2022), pure numpy.

The competition's definition (its Evaluation page; quoted in public copies of the task
description, e.g. the benchmark task texts found by searching "For 3D Hausdorff"):

    "Mean Dice coefficient and 3D Hausdorff distance. [...] The Dice coefficient is defined
    to be 0 when both X and Y are empty. [...] For 3D Hausdorff, we construct 3D volumes by
    combining each 2D segmentation with slice depth as the Z coordinate and then find the
    Hausdorff distance between them. (Here the slice depth for all scans is set to 1). The
    expected / predicted pixel locations are normalized by image size to create a bounded 0-1
    score. The two metrics are combined, with a weight of 0.4 for the Dice metric and 0.6 for
    the Hausdorff distance."

So, per case-day volume and class: ``0.4 * mean over slices of the 2D Dice + 0.6 * (1 - HD)``
with HD the symmetric Hausdorff distance between the predicted and true voxel sets
(z = slice position in the volume, slice depth 1, y and x in pixels) divided by the volume's
diagonal ``sqrt(D^2 + H^2 + W^2)`` (our reading of "normalized by image size": it bounds HD
in [0, 1], as the text requires). The text does not say what HD is when a set is empty; as
the widely used public re-implementations do, both empty -> 0 (no error), one empty -> 1 (the
worst). The score is the mean over case-days and classes.

Note the Dice convention differs from ``src.metrics`` (there, empty-empty is left out of the
mean): this module reproduces the leaderboard, ``src.metrics`` the project's per-class scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.spatial.distance import directed_hausdorff

DICE_WEIGHT, HAUSDORFF_WEIGHT = 0.4, 0.6
EMPTY_DICE = 0.0  # "defined to be 0 when both X and Y are empty"


def dice_2d(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool (H, W) masks; ``EMPTY_DICE`` when both are empty."""
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return EMPTY_DICE
    return 2.0 * float(np.logical_and(pred, truth).sum()) / total


def hausdorff_3d(pred: np.ndarray, truth: np.ndarray) -> float:
    """Normalised symmetric Hausdorff distance of two bool (D, H, W) volumes, in [0, 1]:
    0 when both are empty, 1 when only one is."""
    pred_points, true_points = np.argwhere(pred), np.argwhere(truth)
    if not len(pred_points) and not len(true_points):
        return 0.0
    if not len(pred_points) or not len(true_points):
        return 1.0
    distance = max(
        directed_hausdorff(pred_points, true_points)[0],
        directed_hausdorff(true_points, pred_points)[0],
    )
    return min(1.0, distance / math.sqrt(sum(s * s for s in pred.shape)))


def volume_score(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """One class of one case-day: bool (D, H, W) prediction and truth, slices in order."""
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"expected two (D, H, W) volumes, got {pred.shape} and {truth.shape}")
    dice = float(np.mean([dice_2d(p, t) for p, t in zip(pred, truth, strict=True)]))
    hausdorff = hausdorff_3d(pred, truth)
    score = DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hausdorff)
    return {"dice": dice, "hausdorff": hausdorff, "score": score}


def competition_score(
    volumes: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    class_names: Sequence[str],
) -> dict:
    """``volumes``: per case-day, (predicted, true) slice stacks in slice order, each slice a
    bool (K, H, W) array (one channel per foreground class in ``class_names``). Returns the
    ``score`` (mean over case-days and classes), its ``dice`` and ``hausdorff`` parts, the
    per-class means and the per-case-day rows."""
    rows = []
    for case_day, (pred, truth) in volumes.items():
        pred, truth = np.stack(pred), np.stack(truth)  # (D, K, H, W)
        for k, name in enumerate(class_names):
            rows.append(
                {"case_day": case_day, "class": name} | volume_score(pred[:, k], truth[:, k])
            )
    if not rows:
        return {"score": math.nan, "dice": math.nan, "hausdorff": math.nan, "per_class": {}}

    def mean(key: str, of: Sequence[dict]) -> float:
        return float(np.mean([r[key] for r in of]))

    return {
        "score": mean("score", rows),
        "dice": mean("dice", rows),
        "hausdorff": mean("hausdorff", rows),
        "case_days": len(volumes),
        "per_class": {
            name: {
                k: mean(k, [r for r in rows if r["class"] == name])
                for k in ("score", "dice", "hausdorff")
            }
            for name in class_names
        },
        "per_case_day": rows,
        "definition": (
            "per case-day and class: 0.4 x mean 2D Dice over its slices (0 when both empty) + "
            "0.6 x (1 - 3D Hausdorff / volume diagonal; 0 both empty, 1 one empty); mean over "
            "case-days and classes (src/evaluation/uwmgi_metric.py)"
        ),
    }
