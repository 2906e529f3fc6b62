"""Measure test-time ideas on trained fold checkpoints: flips (TTA) on/off and the plain vs the
robust head-ellipse fit, each with the post-processing the fold's evaluation chose on val.

    python experiments/hc18/ablate.py <run dir> [more run dirs] --root ../shared/data --out FILE.csv

Per run dir (a training job: ``splits.json`` and ``checkpoints/summary.json`` naming the best
checkpoint), every test image is predicted once without and once with flips, at its original
size, by the evaluation's own code (``src.evaluation``), and its head measured both ways
(``src.biometry.measure_class_set``). One row per image and setting goes to ``--out``; the
printed table is the head Dice and |HC - the sonographer's HC| (mm) per setting, pooled.
Cheaper than one ``src.eval`` per setting: the images are predicted once per flip setting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from src.biometry import measure_class_set  # noqa: E402
from src.data.classes import class_set_for  # noqa: E402
from src.data.prepared import read_index, read_original  # noqa: E402
from src.data.readers.hc18 import HC18Reader  # noqa: E402
from src.evaluation.evaluate import dice_per_image  # noqa: E402
from src.inference.checkpoint import load_model  # noqa: E402
from src.inference.predictor import predict_labels  # noqa: E402
from src.runs import run_summary_path, splits_path  # noqa: E402


def ablate_run(run_dir: Path, prepared: Path) -> list[dict]:
    summary = json.loads(run_summary_path(run_dir).read_text())
    model = load_model(summary["checkpoint"])
    class_set = class_set_for(model.class_names)
    rules = summary["postprocess"]["rules"]
    index = read_index(prepared).set_index("image", drop=False)
    rows = []
    for image_id in json.loads(splits_path(run_dir).read_text())["test"]:
        row = index.loc[image_id].to_dict()
        image, truth = read_original(prepared, row)
        for tta in (False, True):
            labels = predict_labels(
                model.net,
                image,
                model.image_size,
                tta_flip=tta,
                rules=rules,
                class_names=model.class_names,
            )
            dice = float(dice_per_image(labels, truth, len(model.class_names))[0])
            for robust in (False, True):
                head = measure_class_set(labels, class_set, row["pixel_size_mm"], robust=robust)
                hc = head.head.hc if head else float("nan")
                rows.append(
                    {
                        "run": str(run_dir),
                        "id": image_id,
                        "tta": tta,
                        "robust_fit": robust,
                        "dice_head": dice,
                        "hc_pred": hc,
                        "hc_reference": row["hc_mm"],
                        "hc_abs_diff": abs(hc - row["hc_mm"]),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--root", type=Path, required=True, help="the HC18 data (raw layout)")
    parser.add_argument("--out", type=Path, required=True, help="per-image CSV to write")
    args = parser.parse_args(argv)
    if args.out.exists():
        raise FileExistsError(f"{args.out} exists; choose another --out")
    prepared = args.out.parent / f".{args.out.stem}-prepared"
    if not (prepared / "index.csv").is_file():
        HC18Reader().prepare(args.root, prepared)
    table = pd.DataFrame([r for run in args.runs for r in ablate_run(run, prepared)])
    table.to_csv(args.out, index=False)
    pooled = table.groupby(["tta", "robust_fit"]).agg(
        images=("id", "count"),
        dice_head=("dice_head", "mean"),
        hc_mae_mm=("hc_abs_diff", "mean"),
        hc_abs_sd_mm=("hc_abs_diff", "std"),
        hc_median_mm=("hc_abs_diff", "median"),
        hc_max_mm=("hc_abs_diff", "max"),
    )
    print(pooled.round(4).to_string())
    return pooled


if __name__ == "__main__":
    main()
