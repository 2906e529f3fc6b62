"""summary.json: the evaluation record written beside every evaluated checkpoint."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from src.utils import keep_existing


def build_summary(
    *,
    checkpoint: Path | None,
    metrics: dict[str, float],
    per_image: list[dict],
    class_names: Sequence[str],
    empty_rule: str,
    image_info: dict[str, dict] | None = None,
    training: dict | None = None,
) -> dict:
    """Mean and per-class scores, per-image values (with plane/subject when known), and the
    ``training`` record of the fit that produced the checkpoint (None when not trained here).

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
            name: {m: metrics.get(f"{m}_{name}") for m in ("dice", "iou")}
            for name in class_names[1:]
        },
        "per_image": images,
    }


def write_summary(summary: dict, directory: Path) -> Path:
    """Write ``summary.json``; an existing one is kept and the new one gets a timestamp."""
    path = keep_existing(directory / "summary.json")
    # NaN (class absent in target and prediction) is written as null: valid JSON.
    path.write_text(json.dumps(_nan_to_none(summary), indent=2))
    return path


def print_summary_table(summary: dict) -> None:
    table = Table(title=f"Test set: {summary['num_images']} images")
    table.add_column("class")
    table.add_column("Dice", justify="right")
    table.add_column("IoU", justify="right")
    for name, scores in summary["per_class"].items():
        table.add_row(name, format_score(scores["dice"]), format_score(scores["iou"]))
    table.add_row(
        "mean",
        format_score(summary["mean"].get("dice_mean")),
        format_score(summary["mean"].get("iou_mean")),
        style="bold",
    )
    Console().print(table)


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
