"""Pool the per-image evaluations of cross-validation folds into one cross-validated figure.

    python experiments/hc18/pool_folds.py <folder with per_image.csv> [more folders] [--json OUT]
        [--row LABEL]   (also print the study table's row: LABEL, folds, Dice, HC error, minutes)

Each test image is in exactly one fold, so the folds' ``per_image.csv`` files together score
every image once. They are aggregated with the evaluation's own ``summarize_rows`` (the same
rules as summary.json) and printed: head Dice, HD95 and ASSD in mm, the head circumference
against the sonographer's value (mean, SD, median and max absolute difference, in mm), and what
the quality score (``src.inference.quality``) tells about that error: the share of errors over
4 mm among the 10 % of scans it ranks worst, its Spearman correlation with the error, and the
error of the scans each fold's flag (threshold calibrated on that fold's val split) leaves
unflagged and flags.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from src.evaluation.evaluate import summarize_rows  # noqa: E402
from src.runs import per_image_path, summary_path  # noqa: E402


def pooled_rows(folders: list[Path]) -> list[dict]:
    tables = []
    for folder in folders:
        path = per_image_path(folder)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (expected an evaluated checkpoint folder)")
        tables.append(pd.read_csv(path, dtype={"subject": str}))
    table = pd.concat(tables, ignore_index=True)
    repeated = table["id"][table["id"].duplicated()].tolist()
    if repeated:
        raise ValueError(f"images scored in two folds: {repeated[:5]}; pass each fold once")
    return table.to_dict("records")


LARGE_ERROR_MM = 4.0
WORST_SHARE = 0.10


def quality_figures(rows: list[dict]) -> dict | None:
    """What the per-scan quality score says about the pooled HC errors; None without it."""
    table = pd.DataFrame(rows)
    if "quality_score" not in table:
        return None
    table = table.dropna(subset=["hc_reference_diff", "quality_score"])
    error = table["hc_reference_diff"].abs()
    score = table["quality_score"].astype(float)
    worst = score.rank(method="first", ascending=False) <= round(WORST_SHARE * len(table))
    flagged = table["flagged"].astype(str) == "True"
    return {
        "scans_scored": len(table),
        "spearman_score_error": float(score.corr(error, method="spearman")),
        f"worst_{WORST_SHARE:.0%}_by_score": {
            "scans": int(worst.sum()),
            f"share_error_over_{LARGE_ERROR_MM:g}mm": float((error[worst] > LARGE_ERROR_MM).mean()),
            "error_mean_mm": float(error[worst].mean()),
        },
        f"share_of_all_errors_over_{LARGE_ERROR_MM:g}mm": float((error > LARGE_ERROR_MM).mean()),
        "flag_calibrated_on_val": {
            "flagged_share": float(flagged.mean()),
            "error_flagged_mean_mm": float(error[flagged].mean()) if flagged.any() else np.nan,
            "error_unflagged_mean_mm": float(error[~flagged].mean()),
            "error_unflagged_max_mm": float(error[~flagged].max()),
        },
    }


def training_minutes(folders: list[Path]) -> float | None:
    """Mean training wall clock per fold, in minutes (epochs run x seconds per epoch, from
    each folder's summary.json); None when a folder has no training record."""
    minutes = []
    for folder in folders:
        path = summary_path(folder)
        training = json.loads(path.read_text()).get("training") if path.is_file() else None
        if not training:
            return None
        minutes.append(training["epochs_run"] * training["seconds_per_epoch"] / 60)
    return float(np.mean(minutes))


def table_row(label: str, figures: dict, minutes: float | None) -> str:
    """``| label | folds | head Dice | HC mean | median | max | minutes |`` (markdown)."""
    hc = figures["hc_vs_reference_mm"]
    dice = figures["per_class"]["head"]["dice"]
    time = "-" if minutes is None else f"{minutes:.1f}"
    return (
        f"| {label} | {figures['folds']} ({figures['images']} scans) | {dice:.4f} "
        f"| {hc['mean_abs']:.2f} | {hc['median_abs']:.2f} | {hc['max_abs']:.1f} | {time} |"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the pooled figures here")
    parser.add_argument("--row", metavar="LABEL", help="also print the study table's row")
    args = parser.parse_args(argv)
    rows = pooled_rows(args.folders)
    classes = ["background", *(c.removeprefix("dice_") for c in rows[0] if c.startswith("dice_"))]
    summary = summarize_rows(rows, classes)
    figures = {
        "images": len(rows),
        "folds": len(args.folders),
        "per_class": {
            name: {k: summary["per_class"][name][k] for k in ("dice", "hd95_mm", "assd_mm")}
            for name in classes[1:]
        },
        "dice_sd": {
            name: float(pd.Series([r[f"dice_{name}"] for r in rows]).std()) for name in classes[1:]
        },
        "hc_vs_reference_mm": summary["biometry"].get("mm", {}).get("hc_vs_reference"),
        # The published "1.90 +- 1.76 mm" is the mean and SD of the absolute differences.
        "hc_abs_diff_sd_mm": float(
            pd.Series([r.get("hc_reference_diff") for r in rows]).abs().std()
        ),
        "quality": quality_figures(rows),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if args.row:
        print(table_row(args.row, figures, training_minutes(args.folders)))
    return figures


if __name__ == "__main__":
    main()
