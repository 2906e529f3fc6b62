"""summary.json, per_image.csv and the Bland-Altman plot: the evaluation records written beside
every evaluated checkpoint. Nothing already written is overwritten (``keep_existing``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from src.evaluation.agreement import write_bland_altman
from src.utils import keep_existing

# Per-class keys of summary.json, in this order where present.
PER_CLASS_METRICS = ("dice", "iou", "hd95_px", "assd_px", "hd95_mm", "assd_mm")


def build_summary(
    *,
    checkpoint: Path | None,
    metrics: dict[str, float],
    per_image: list[dict],
    class_names: Sequence[str],
    empty_rule: str,
    image_info: dict[str, dict] | None = None,
    training: dict | None = None,
    counts: dict[str, dict[str, int]] | None = None,
    extra: dict | None = None,
) -> dict:
    """Mean and per-class scores, per-image values (with plane/subject when known), and the
    ``training`` record of the fit that produced the checkpoint (None when not trained here).
    ``counts``: per class, the number of images of each empty/present case; ``extra``: further
    sections (surface-distance rule, per plane, biometry, settings) appended as they are.

    Per-image rows follow ``image_info``'s order (the split's), so the file is the same
    whatever order the rows were gathered in (under DDP: process by process).
    """
    info = image_info or {}
    order = {image_id: i for i, image_id in enumerate(info)}
    rows = sorted(per_image, key=lambda row: order.get(row["id"], len(order)))
    images = [{**info.get(row["id"], {}), **row} for row in rows]
    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "training": training,
        "num_images": len(images),
        "classes": list(class_names[1:]),
        "empty_mask_rule": empty_rule,
        "mean": {k: v for k, v in metrics.items() if k.endswith("_mean")},
        "per_class": {
            name: {
                **{
                    m: metrics.get(f"{m}_{name}")
                    for m in PER_CLASS_METRICS
                    if m in ("dice", "iou") or f"{m}_{name}" in metrics
                },
                **({"counts": counts[name]} if counts else {}),
            }
            for name in class_names[1:]
        },
        "per_image": images,
        **(extra or {}),
    }


def write_summary(summary: dict, directory: Path) -> Path:
    """Write ``summary.json``; an existing one is kept and the new one gets a timestamp."""
    path = keep_existing(directory / "summary.json")
    # NaN (class absent in target and prediction) is written as null: valid JSON.
    path.write_text(json.dumps(_nan_to_none(summary), indent=2))
    return path


def write_per_image_csv(rows: Sequence[dict], directory: Path) -> Path:
    """``per_image.csv``: one row per image (id, plane, subject, pixel size, per-class
    metrics, biometry); an existing one is kept and the new one gets a timestamp."""
    path = keep_existing(directory / "per_image.csv")
    pd.DataFrame(list(rows)).to_csv(path, index=False)
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


def print_summary_table(summary: dict) -> None:
    """Per class: Dice, IoU, HD95 and ASSD (mm where every image has a pixel size, else px)
    and the missed / spurious counts, where the summary has them."""
    per_class = summary["per_class"]
    first = next(iter(per_class.values()), {})
    units = "mm" if _all_known(per_class, "hd95_mm") else "px"
    columns = [("Dice", "dice"), ("IoU", "iou")]
    if f"hd95_{units}" in first:
        columns += [(f"HD95 {units}", f"hd95_{units}"), (f"ASSD {units}", f"assd_{units}")]
    table = Table(title=f"Test set: {summary['num_images']} images")
    table.add_column("class")
    for title, _ in columns:
        table.add_column(title, justify="right")
    if "counts" in first:
        table.add_column("missed / spurious / both empty", justify="right")
    for name, scores in per_class.items():
        cells = [format_score(scores.get(key)) for _, key in columns]
        if "counts" in scores:
            c = scores["counts"]
            cells.append(f"{c['target_only']} / {c['prediction_only']} / {c['both_empty']}")
        table.add_row(name, *cells)
    mean_cells = [format_score(summary["mean"].get(f"{key}_mean")) for _, key in columns]
    table.add_row("mean", *mean_cells, *([""] if "counts" in first else []), style="bold")
    Console().print(table)


def _all_known(per_class: dict, key: str) -> bool:
    values = [scores.get(key) for scores in per_class.values()]
    return bool(values) and all(v is not None and not math.isnan(v) for v in values)


def format_score(value: float | None) -> str:
    """Four decimals, or n/a for a missing or undefined (NaN) score."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
