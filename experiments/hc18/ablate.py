"""Measure test-time ideas and quality signals on trained HC18 folds, scan by scan.

    python experiments/hc18/ablate.py <run dir> [more run dirs] --root ../shared/data --out FILE.csv

Per run dir (a training job: ``splits.json`` and ``checkpoints/summary.json`` naming the best
checkpoint), every test scan is predicted once in eight views (the scan, its mirror, each
zoomed out to 90, 80 and 65%: ``src.inference.predictor.predict_views``), at its original size,
with the post-processing the fold's evaluation chose on val. From them:

- test-time augmentation: the mean logits of view sets (none, flips, flips x zoom 0.9 or 0.8),
  each measured with the plain and the robust ellipse fit: head Dice and |HC - the
  sonographer's HC| (mm), pooled;
- quality signals, ranked against the error of the flips setting: the HC spread over view sets
  (the shipped score is the spread over flips x zoom 0.8, ``src.inference.quality``) and the
  uncertain band of the mean head probability (pixels between 0.1 and 0.9 per pixel of head
  radius). Printed: Spearman with the error, the share of errors over 4 mm among the 10% of
  scans ranked worst, and the mean error of the other 90%.

Nothing here is tuned on these scans: the figures rank ideas for the study's table. One row per
scan goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from src.biometry import measure_class_set  # noqa: E402
from src.data.classes import head_class_set  # noqa: E402
from src.data.prepared import read_index, read_original  # noqa: E402
from src.data.readers.hc18 import HC18Reader  # noqa: E402
from src.evaluation.evaluate import dice_per_image  # noqa: E402
from src.inference.checkpoint import load_model  # noqa: E402
from src.inference.postprocess import postprocess  # noqa: E402
from src.inference.predictor import predict_views  # noqa: E402
from src.inference.views import View  # noqa: E402
from src.runs import run_summary_path, splits_path  # noqa: E402

VIEWS = (
    View(),
    View(flip=True),
    View(zoom=0.9),
    View(flip=True, zoom=0.9),
    View(zoom=0.8),
    View(flip=True, zoom=0.8),
    View(zoom=0.65),
    View(flip=True, zoom=0.65),
)
# View sets, by index into VIEWS: test-time augmentation (their mean logits) ...
TTA_SETS = {"none": [0], "flip": [0, 1], "flip+zoom0.9": [0, 1, 2, 3], "flip+zoom0.8": [0, 1, 4, 5]}
# ... and the views whose HC spread is a quality signal.
SPREAD_SETS = {
    "spread_flip": [0, 1],
    "spread_flip_zoom0.8": [0, 1, 4, 5],
    "spread_all8": [*range(8)],
}
LARGE_ERROR_MM, WORST_SHARE = 4.0, 0.10


def head_hc(labels, class_set, pixel_size, robust=False) -> float:
    biometry = measure_class_set(labels, class_set, pixel_size, robust=robust)
    return math.nan if biometry is None or biometry.head is None else biometry.head.hc


def ablate_run(run_dir: Path, prepared: Path) -> list[dict]:
    summary = json.loads(run_summary_path(run_dir).read_text())
    model = load_model(summary["checkpoint"])
    names = model.class_names
    class_set = head_class_set(names)
    rules = summary["postprocess"]["rules"]
    index = read_index(prepared).set_index("image", drop=False)
    rows = []
    for image_id in json.loads(splits_path(run_dir).read_text())["test"]:
        scan = index.loc[image_id].to_dict()
        image, truth = read_original(prepared, scan)
        size = scan["pixel_size_mm"]
        logits = predict_views(model.net.eval(), image, model.image_size, VIEWS)
        row = {"run": str(run_dir), "id": image_id, "hc_reference": scan["hc_mm"]}
        for name, members in TTA_SETS.items():
            mean = logits[members].mean(0).argmax(0).numpy().astype(np.uint8)
            labels = postprocess(mean, rules, names)
            row[f"dice_{name}"] = float(dice_per_image(labels, truth, len(names))[0])
            row[f"hc_{name}"] = head_hc(labels, class_set, size)
            row[f"hc_{name}_robust"] = head_hc(labels, class_set, size, robust=True)
            if name == "flip":
                head = torch.softmax(logits[members].mean(0), 0)[1:].sum(0).numpy()
                band = ((head > 0.1) & (head < 0.9)).sum()
                row["uncertain_band"] = band / max(math.sqrt((head > 0.5).sum()), 1.0)
        each = [
            head_hc(
                postprocess(v.argmax(0).numpy().astype(np.uint8), rules, names), class_set, size
            )
            for v in logits
        ]
        for name, members in SPREAD_SETS.items():
            values = [each[i] for i in members]
            found = [v for v in values if not math.isnan(v)]
            row[name] = max(found) - min(found) if len(found) == len(values) else math.inf
        rows.append(row)
    return rows


def report(table: pd.DataFrame) -> None:
    print(f"{len(table)} scans, {table['run'].nunique()} run(s)")
    for name in TTA_SETS:
        for fit in ("", "_robust"):
            error = (table[f"hc_{name}{fit}"] - table["hc_reference"]).abs()
            print(
                f"tta {name:13s} fit {'robust' if fit else 'plain ':6s}: head Dice "
                f"{table[f'dice_{name}'].mean():.4f}, |HC error| mean {error.mean():.2f} "
                f"median {error.median():.2f} max {error.max():.1f} mm "
                f"({error.isna().sum()} without a head)"
            )
    error = (table["hc_flip"] - table["hc_reference"]).abs()
    worst_n = round(WORST_SHARE * len(table))
    for name in [*SPREAD_SETS, "uncertain_band"]:
        score = table[name].astype(float)
        worst = score.rank(method="first", ascending=False) <= worst_n
        print(
            f"{name:20s} Spearman {score.corr(error, method='spearman'):+.3f}; worst 10%: "
            f"{(error[worst] > LARGE_ERROR_MM).mean():.0%} over 4 mm; "
            f"the other 90%: {error[~worst].mean():.2f} mm"
        )


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--root", type=Path, required=True, help="the HC18 data (raw layout)")
    parser.add_argument("--out", type=Path, required=True, help="per-scan CSV to write")
    args = parser.parse_args(argv)
    if args.out.exists():
        raise FileExistsError(f"{args.out} exists; choose another --out")
    prepared = args.out.parent / f".{args.out.stem}-prepared"
    if not (prepared / "index.csv").is_file():
        HC18Reader().prepare(args.root, prepared)
    with torch.no_grad():
        table = pd.DataFrame([r for run in args.runs for r in ablate_run(run, prepared)])
    table.to_csv(args.out, index=False)
    report(table)
    return table


if __name__ == "__main__":
    main()
