"""Measure test-time views and quality signals on evaluated HC18 folds, scan by scan.

    python experiments/hc18/views.py <fold folder>/checkpoints [...] --prepared <prepared dir> \
        [--out views.csv]

For each evaluated fold (a ``checkpoints/`` folder holding its best ``epoch_*.ckpt``, its
``per_image.csv`` and ``summary.json``) every test scan is predicted in eight views (the scan,
its mirror, each zoomed out to 90, 80 and 65%) and measured (the post-processing rules the
fold's evaluation chose): the head circumference from the mean logits of several view sets
(test-time augmentation) and with the robust ellipse refit, against the sonographer's HC; and
candidate quality scores (the HC spread over view sets, the uncertain band of the mean
probability). Printed: each view set's pooled HC error, and each score's Spearman correlation
with the error, the share of errors over 4 mm among the 10% of scans it ranks worst, and the
error of the other 90%. Nothing here is tuned: the figures rank ideas for the study's table.
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
from src.inference.checkpoint import load_model  # noqa: E402
from src.inference.images import read_image  # noqa: E402
from src.inference.postprocess import postprocess  # noqa: E402
from src.inference.predictor import View, predict_views  # noqa: E402

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
# View sets by index into VIEWS: test-time augmentation (mean logits) and spreads.
TTA_SETS = {"none": [0], "flip": [0, 1], "flip+zoom0.9": [0, 1, 2, 3], "flip+zoom0.8": [0, 1, 4, 5]}
SPREAD_SETS = {
    "spread_flip": [0, 1],
    "spread_flip_zoom0.8": [0, 1, 4, 5],  # the shipped quality score
    "spread_all8": list(range(8)),
}
LARGE_ERROR_MM, WORST_SHARE = 4.0, 0.10


def measure(labels, class_set, pixel_size, rules, class_names, robust=False) -> float:
    if rules:
        labels = postprocess(labels, rules, class_names)
    biometry = measure_class_set(labels, class_set, pixel_size, robust=robust)
    return math.nan if biometry is None or biometry.head is None else biometry.head.hc


def fold_rows(folder: Path, prepared: Path) -> list[dict]:
    (checkpoint,) = folder.glob("epoch_*.ckpt")
    restored = load_model(checkpoint)
    net = restored.net.eval()
    names = restored.class_names
    class_set = head_class_set(names)
    rules = json.loads((folder / "summary.json").read_text())["postprocess"]["rules"]
    table = pd.read_csv(folder / "per_image.csv", dtype={"subject": str})
    rows = []
    for _, scan in table.iterrows():
        image = read_image(prepared / scan["id"], restored.in_channels)
        logits = predict_views(net, image, restored.image_size, VIEWS)
        labels = logits.argmax(1).numpy().astype(np.uint8)
        size = scan["pixel_size_mm"]
        row = {"id": scan["id"], "fold": folder.parent.name, "reference": scan["hc_reference"]}
        for name, members in TTA_SETS.items():
            mean = logits[members].mean(0).argmax(0).numpy().astype(np.uint8)
            row[f"hc_{name}"] = measure(mean, class_set, size, rules, names)
            if name == "flip":
                row["hc_flip_robust"] = measure(mean, class_set, size, rules, names, robust=True)
                head = torch.softmax(logits[members].mean(0), 0)[1:].sum(0).numpy()
                uncertain = ((head > 0.1) & (head < 0.9)).sum()
                row["uncertain_band"] = uncertain / max(math.sqrt((head > 0.5).sum()), 1.0)
        each = [measure(v, class_set, size, rules, names) for v in labels]
        for name, members in SPREAD_SETS.items():
            values = [each[i] for i in members]
            row[name] = (
                math.inf if any(math.isnan(v) for v in values) else max(values) - min(values)
            )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared data dir")
    parser.add_argument("--out", type=Path, help="also write the per-scan table here")
    args = parser.parse_args(argv)
    rows = [row for folder in args.folders for row in fold_rows(folder, args.prepared)]
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"{len(table)} scans, {len(args.folders)} fold(s)")
    for name in [*(f"hc_{n}" for n in TTA_SETS), "hc_flip_robust"]:
        error = (table[name] - table["reference"]).abs()
        print(
            f"{name:22s} |HC error| mean {error.mean():.2f} median {error.median():.2f} "
            f"max {error.max():.1f} mm ({error.isna().sum()} without a head)"
        )
    error = (table["hc_flip"] - table["reference"]).abs()
    worst_n = round(WORST_SHARE * len(table))
    for name in [*SPREAD_SETS, "uncertain_band"]:
        score = table[name].astype(float)
        worst = score.rank(method="first", ascending=False) <= worst_n
        print(
            f"{name:22s} Spearman {score.corr(error, method='spearman'):+.3f}, worst 10%: "
            f"{(error[worst] > LARGE_ERROR_MM).mean():.0%} over 4 mm, "
            f"the other 90% at {error[~worst].mean():.2f} mm"
        )
    return table


if __name__ == "__main__":
    main()
