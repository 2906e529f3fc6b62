"""From a scored split to its records: summary.json's content (``build_summary``, and
``evaluation_summary`` for an ``evaluate`` result), the files written beside the checkpoint
(summary.json, per_image.csv, the Bland-Altman plots, the head ellipses in HC18's submission
format) and the printed table."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from src.data.readers.hc18 import SUBMISSION_CSV, write_submission
from src.ellipse import ELLIPSE_FIELDS
from src.evaluation.agreement import write_bland_altman_plots
from src.evaluation.surface import SURFACE_DISTANCE_RULE
from src.metrics import EMPTY_MASK_RULE
from src.runs import keep_existing, write_per_image_csv, write_summary

log = logging.getLogger(__name__)

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


def evaluation_summary(
    result: dict,
    *,
    checkpoint: Path | None,
    class_names: Sequence[str],
    split: str,
    training: dict | None = None,
    training_resolution: dict | None = None,
) -> dict:
    """summary.json's content: the original-size scores in the existing keys, plus surface
    distances, case counts, per stratum, biometry, post-processing and settings."""
    return build_summary(
        checkpoint=checkpoint,
        metrics=result["metrics"],
        per_image=result["rows"],
        class_names=class_names,
        empty_rule=EMPTY_MASK_RULE,
        training=training,
        counts=result["counts"],
        extra={
            "split": split,
            "surface_distance_rule": SURFACE_DISTANCE_RULE,
            "settings": result["settings"],
            "postprocess": result["postprocess"],
            "per_stratum": result["per_stratum"],
            "biometry": result["biometry"],
            # Scores of the trainer's test pass on masks at the training size, for comparison.
            "training_resolution": training_resolution,
            # The class set's competition score (UW-Madison GI), where it has one.
            **({"competition": result["competition"]} if "competition" in result else {}),
            # The head measurements' quality flag: threshold (val) and what it flags (test).
            **({"quality": result["quality"]} if "quality" in result else {}),
            # Per-volume Dice and slice detection (src.evaluation.volumes), where volumes exist.
            **{key: result[key] for key in ("per_volume", "detection") if key in result},
        },
    )


def write_evaluation(summary: dict, rows: Sequence[dict], directory: Path) -> Path:
    """summary.json, per_image.csv and the Bland-Altman plots in ``directory`` (existing
    files kept, new ones timestamped); prints the table. Returns summary.json's path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_summary(summary, directory)
    csv_path = write_per_image_csv(rows, directory)
    plots = write_bland_altman_plots(rows, directory)
    submission = write_ellipses_in_mm(rows, directory)
    print_summary_table(summary)
    written = [*plots, *([submission] if submission else [])]
    log.info("Evaluation: %s, %s%s", path, csv_path.name, "".join(f", {p.name}" for p in written))
    return path


def write_ellipses_in_mm(rows: Sequence[dict], directory: Path) -> Path | None:
    """The predicted head ellipses in HC18's submission format, when every image was measured
    in mm (an existing file is kept, the new one timestamped); None otherwise."""
    if not rows or any(row.get("biometry_units") != "mm" for row in rows):
        return None
    ellipses = {
        Path(row["id"]).name: None
        if math.isnan(row["ellipse_center_x"])
        else {key: row[f"ellipse_{key}"] for key in ELLIPSE_FIELDS}
        for row in rows
    }
    return write_submission(keep_existing(directory / SUBMISSION_CSV), ellipses)


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
