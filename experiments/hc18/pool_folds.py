"""Pool the per-image evaluations of cross-validation folds into one cross-validated figure.

    python experiments/hc18/pool_folds.py <folder with per_image.csv> [more folders] [--json OUT]

Each test image is in exactly one fold, so the folds' ``per_image.csv`` files together score
every image once. They are aggregated with the evaluation's own ``summarize_rows`` (the same
rules as summary.json) and printed: head Dice, HD95 and ASSD in mm, and the head circumference
against the sonographer's value (mean, SD, median and max absolute difference, in mm).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from src.evaluation.evaluate import summarize_rows  # noqa: E402
from src.runs import per_image_path  # noqa: E402


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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the pooled figures here")
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
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
