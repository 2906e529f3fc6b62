"""From an ``evaluate`` result to the records beside the checkpoint: summary.json (the
existing format extended), per_image.csv, the Bland-Altman plot and the printed table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from src.evaluation.surface import SURFACE_DISTANCE_RULE
from src.metrics import EMPTY_MASK_RULE
from src.summary import (
    build_summary,
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
    distances, case counts, per plane, biometry, post-processing and settings."""
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
            "per_plane": result["per_plane"],
            "biometry": result["biometry"],
            # Scores of the trainer's test pass on masks at the training size, for comparison.
            "training_resolution": training_resolution,
        },
    )


def write_evaluation(summary: dict, rows: Sequence[dict], directory: Path) -> Path:
    """summary.json, per_image.csv and the Bland-Altman plots in ``directory`` (existing
    files kept, new ones timestamped); prints the table. Returns summary.json's path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_summary(summary, directory)
    csv_path = write_per_image_csv(rows, directory)
    plots = write_bland_altman_plots(rows, directory)
    print_summary_table(summary)
    log.info("Evaluation: %s, %s%s", path, csv_path.name, "".join(f", {p.name}" for p in plots))
    return path
