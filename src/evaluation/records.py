"""From an ``evaluate`` result to the records beside the checkpoint: summary.json (the
existing format extended), per_image.csv, the Bland-Altman plot, the head ellipses in
HC18's submission format and the printed table."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from src.data.readers.hc18 import SUBMISSION_CSV, write_submission
from src.ellipse import ELLIPSE_FIELDS
from src.evaluation.surface import SURFACE_DISTANCE_RULE
from src.metrics import EMPTY_MASK_RULE
from src.summary import (
    build_summary,
    keep_existing,
    print_summary_table,
    write_bland_altman_plots,
    write_per_image_csv,
    write_summary,
)

log = logging.getLogger(__name__)


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
