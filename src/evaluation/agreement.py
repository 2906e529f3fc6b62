"""Agreement between two measurements of the same quantity over images (a prediction against
the truth): paired difference statistics, per-image ellipse differences and the Bland-Altman
plots."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.biometry import HeadMeasurement
from src.runs import keep_existing


@dataclass(frozen=True)
class DifferenceStats:
    """Summary of ``predicted - truth`` over images (signed and absolute)."""

    n: int
    mean: float  # bias
    std: float  # sample SD (ddof 1); NaN for one pair
    median: float
    mean_abs: float
    median_abs: float
    max_abs: float


def _paired(truth: Sequence[float], predicted: Sequence[float]) -> tuple[np.ndarray, ...]:
    truth, predicted = (np.asarray(v, dtype=np.float64).ravel() for v in (truth, predicted))
    if truth.shape != predicted.shape or truth.size == 0:
        raise ValueError(
            f"truth and predicted must be non-empty and of equal length, got "
            f"{truth.size} and {predicted.size}"
        )
    if not (np.isfinite(truth).all() and np.isfinite(predicted).all()):
        raise ValueError(
            "truth and predicted must be finite; leave out images without a measurement"
        )
    return truth, predicted


def difference_stats(truth: Sequence[float], predicted: Sequence[float]) -> DifferenceStats:
    """Mean, SD, median of ``predicted - truth`` and of its absolute value, max absolute."""
    truth, predicted = _paired(truth, predicted)
    difference = predicted - truth
    absolute = np.abs(difference)
    return DifferenceStats(
        n=int(difference.size),
        mean=float(difference.mean()),
        std=float(difference.std(ddof=1)) if difference.size > 1 else math.nan,
        median=float(np.median(difference)),
        mean_abs=float(absolute.mean()),
        median_abs=float(np.median(absolute)),
        max_abs=float(absolute.max()),
    )


def ellipse_differences(truth: HeadMeasurement, predicted: HeadMeasurement) -> dict[str, float]:
    """Per-image ``predicted - truth`` of HC, BPD, OFD, the centre offset (a distance) and
    the major-axis angle (radians, wrapped to [-pi/2, pi/2): axes have no direction)."""
    if truth.units != predicted.units:
        raise ValueError(f"units differ: truth {truth.units}, predicted {predicted.units}")
    return {
        "hc": predicted.hc - truth.hc,
        "bpd": predicted.bpd - truth.bpd,
        "ofd": predicted.ofd - truth.ofd,
        "centre": math.hypot(
            predicted.center_x - truth.center_x, predicted.center_y - truth.center_y
        ),
        "angle_rad": (predicted.angle_rad - truth.angle_rad + math.pi / 2) % math.pi - math.pi / 2,
    }


def write_bland_altman(
    truth: Sequence[float],
    predicted: Sequence[float],
    path: str | Path,
    *,
    quantity: str = "HC",
    units: str = "mm",
    overwrite: bool = False,
) -> Path:
    """Bland-Altman plot as a PNG: mean of each pair vs its difference (predicted - truth),
    with the bias and the bias +- 1.96 SD limits of agreement. An existing file is an
    error unless ``overwrite``."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state; only needed here

    truth, predicted = _paired(truth, predicted)
    if truth.size < 2:
        raise ValueError("a Bland-Altman plot needs at least two pairs")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another path or pass overwrite=True")
    stats = difference_stats(truth, predicted)
    low, high = stats.mean - 1.96 * stats.std, stats.mean + 1.96 * stats.std
    figure = Figure(figsize=(6, 4.5), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.scatter((truth + predicted) / 2, predicted - truth, s=14, alpha=0.7)
    for value, style, name in (
        (stats.mean, "-", "bias"),
        (low, "--", "-1.96 SD"),
        (high, "--", "+1.96 SD"),
    ):
        axes.axhline(value, color="tab:red", linestyle=style, linewidth=1)
        axes.annotate(
            f"{name} {value:+.2f} {units}",
            (1, value),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=8,
        )
    axes.set_xlabel(f"mean of truth and prediction, {quantity} ({units})")
    axes.set_ylabel(f"prediction - truth, {quantity} ({units})")
    axes.set_title(f"Bland-Altman, {quantity} (n = {stats.n})")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    figure.savefig(partial, format="png")
    os.replace(partial, path)  # never a half-written PNG under the final name
    return path


def write_bland_altman_plots(rows: Sequence[dict], directory: Path) -> list[Path]:
    """``bland_altman_hc_<units>.png`` per units with at least two images whose head was
    measured in both truth and prediction (an existing plot is kept)."""
    table = pd.DataFrame(list(rows))
    if "hc_true" not in table:
        return []
    written = []
    for units, group in table.groupby("biometry_units"):
        both = group[["hc_true", "hc_pred"]].dropna()
        if len(both) < 2:
            continue
        path = keep_existing(directory / f"bland_altman_hc_{units}.png")
        written.append(
            write_bland_altman(both["hc_true"], both["hc_pred"], path, quantity="HC", units=units)
        )
    return written
