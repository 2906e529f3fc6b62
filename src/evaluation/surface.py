"""Surface distances between two binary masks: HD95 and ASSD, with anisotropic pixel spacing.

Hand-written on scipy's exact Euclidean distance transform because no installed library
offers both at full resolution: torchmetrics 1.9 has only the maximum Hausdorff distance
(no 95th percentile, no average surface distance), and its distance transform is a
pure-torch pairwise computation meant for small images; MONAI is not a dependency.

Definitions (those of MONAI and the Medical Segmentation Decathlon):
- boundary of a mask = its pixels with at least one 4-neighbour outside it (pixels on the
  image's edge count as boundary, as if the image were padded with background);
- d(P->T) = for every boundary pixel of P, the distance (pixel centre to centre, in units
  of ``spacing``) to the nearest boundary pixel of T; likewise d(T->P);
- HD95 = max(95th percentile of d(P->T), 95th percentile of d(T->P)) (numpy's linear
  percentile); ASSD = mean of d(P->T) and d(T->P) pooled together.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image's edge is outside)."""
    mask = mask.astype(bool)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def directed_distances(
    source: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Distance from every boundary pixel of ``source`` to the nearest boundary pixel of
    ``target`` (both non-empty); ``spacing`` = (row, col) pixel size."""
    to_target = ndimage.distance_transform_edt(~boundary(target), sampling=spacing)
    return to_target[boundary(source)]


def hd95_assd(
    pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, float]:
    """(HD95, ASSD) of two non-empty binary masks, in units of ``spacing``."""
    if not (pred.any() and target.any()):
        raise ValueError("hd95_assd needs two non-empty masks; see EMPTY_CASES for the others")
    forward = directed_distances(pred, target, spacing)
    backward = directed_distances(target, pred, spacing)
    hd95 = max(np.percentile(forward, 95), np.percentile(backward, 95))
    assd = (forward.sum() + backward.sum()) / (forward.size + backward.size)
    return float(hd95), float(assd)


# Per image and class, which masks hold the class; counted in summary.json.
CASES = ("both_empty", "target_only", "prediction_only", "both_present")
SURFACE_DISTANCE_RULE = (
    "per image and class, HD95 and ASSD between the boundaries (pixels with a 4-neighbour "
    "outside; image edge counts as outside) of prediction and target: both_present -> the "
    "distances; target_only (a missed structure) or prediction_only (a spurious one) -> the "
    "image diagonal, the largest distance possible in the image, so a miss raises the mean "
    "instead of leaving it; both_empty -> NaN, left out of the mean. Means are nanmeans over "
    "images; counts of each case are reported per class. In mm where the pixel size is known "
    "(pixel_size_mm of index.csv), else null."
)


def case_of(pred: np.ndarray, target: np.ndarray) -> str:
    """Which of ``CASES`` a (prediction, target) pair of one class is."""
    in_pred, in_target = bool(pred.any()), bool(target.any())
    if in_pred and in_target:
        return "both_present"
    if in_target:
        return "target_only"
    return "prediction_only" if in_pred else "both_empty"


def class_surface_distances(
    pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)
) -> tuple[str, float, float]:
    """(case, HD95, ASSD) under ``SURFACE_DISTANCE_RULE``, in units of ``spacing``."""
    case = case_of(pred, target)
    if case == "both_present":
        return case, *hd95_assd(pred, target, spacing)
    if case == "both_empty":
        return case, math.nan, math.nan
    diagonal = math.hypot(pred.shape[0] * spacing[0], pred.shape[1] * spacing[1])
    return case, diagonal, diagonal
