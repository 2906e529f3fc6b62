"""How far to trust one head measurement: the spread of the head circumference the network
gives for views of the same image it should agree on (the image, its mirror, both zoomed out).

Why this signal: on real scans the large errors are heads cut short by shadows, where the
network's outline is a guess, and a guess moves when the image is mirrored or shown smaller;
a head the image supports measures the same in every view. The fit-geometry ``check`` of
``src.biometry`` cannot see this (a wrong head is still a smooth ellipse). The threshold that
turns the score into a flag is chosen on validation images (``calibrate_threshold``), never on
the images it flags.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from src.biometry import PixelSize, measure_class_set
from src.data.classes import class_set_for
from src.inference.postprocess import postprocess
from src.inference.views import View
from src.runs import read_summary, summary_path

log = logging.getLogger(__name__)

# The views whose disagreement is the score: mirrored x zoomed out to 80 %.
QUALITY_VIEWS = (View(), View(flip=True), View(zoom=0.8), View(flip=True, zoom=0.8))
# The share of validation images a calibrated threshold flags.
FLAG_SHARE = 0.10


def hc_spread(
    view_labels: Sequence[np.ndarray],
    class_names: Sequence[str],
    pixel_size_mm: PixelSize = None,
    rules: Mapping[str, Sequence[str]] | None = None,
) -> float:
    """max - min of the head circumference over the views' label maps (after the
    post-processing ``rules``), in mm given a pixel size, else px. inf when some views find a
    head and others none (the worst case); NaN when none does (nothing to measure)."""
    class_set = class_set_for(class_names)
    if class_set is None or not class_set.head_labels:
        raise ValueError(f"classes {list(class_names)} have no head to measure")
    circumferences = []
    for labels in view_labels:
        if rules:
            labels = postprocess(labels, rules, class_names)
        biometry = measure_class_set(labels, class_set, pixel_size_mm)
        head = biometry.head if biometry else None
        circumferences.append(math.nan if head is None else head.hc)
    found = [c for c in circumferences if not math.isnan(c)]
    if not found:
        return math.nan
    if len(found) < len(circumferences):
        return math.inf
    return float(max(found) - min(found))


def calibrate_threshold(scores: Sequence[float], share: float = FLAG_SHARE) -> float | None:
    """The score above which ``share`` of these (validation) scores lie; None without any
    finite score. NaN scores (no head) do not count; inf ones count as the worst."""
    values = np.asarray([s for s in scores if not math.isnan(s)], dtype=float)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    return float(np.quantile(np.where(np.isfinite(values), values, finite.max()), 1 - share))


def is_flagged(score: float, threshold: float | None) -> bool | None:
    """Redo this measurement by hand? None when there is no threshold or nothing measured."""
    if threshold is None or math.isnan(score):
        return None
    return bool(score > threshold)


def checkpoint_threshold(ckpt_paths: Sequence[str | Path]) -> float | None:
    """The flag threshold calibrated when these checkpoints were evaluated (the ``quality``
    record of the summary.json beside each; several models: the median of theirs); None,
    with a warning, when one has none (the score is still reported, nothing is flagged)."""
    thresholds = []
    for ckpt in ckpt_paths:
        path = summary_path(Path(ckpt).parent)
        try:
            threshold = read_summary(path, required=()).get("quality", {}).get("threshold")
        except (OSError, ValueError):
            threshold = None
        if threshold is None:
            log.warning(
                "%s: no calibrated quality threshold (evaluate the checkpoint first); "
                "quality scores are reported, nothing is flagged",
                path,
            )
            return None
        thresholds.append(float(threshold))
    return float(np.median(thresholds))


def evaluated_settings(ckpt_paths: Sequence[str | Path]) -> dict:
    """How the checkpoint was evaluated, from the summary.json beside it: ``tta_flip`` and
    the post-processing ``rules`` it chose (each None where nothing was recorded: an
    ensemble, or a checkpoint never evaluated). The defaults of src.eval, src.predict and
    src.export, so that a checkpoint is used as it was scored."""
    if len(ckpt_paths) != 1:
        return {"tta_flip": None, "rules": None}
    path = summary_path(Path(ckpt_paths[0]).parent)
    try:
        recorded = read_summary(path, required=()) if path.is_file() else {}
    except (OSError, ValueError):
        recorded = {}
    return {
        "tta_flip": (recorded.get("settings") or {}).get("tta_flip"),
        "rules": (recorded.get("postprocess") or {}).get("rules") or None,
    }
