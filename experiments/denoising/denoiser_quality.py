"""PSNR / SSIM of the study's denoisers on the same phantom test pairs, and what they do to one
image: denoiser_quality.md, denoiser_quality.csv and examples.png.

    python experiments/denoising/denoiser_quality.py <src.train_denoiser run or sweep dir> ...
        [--out experiments/denoising] [--overwrite]

Reads every ``checkpoints/summary.json`` under the given folders (written by
``src.train_denoiser``: a trained DiConvAE, or a classical filter scored without training).
All runs must score the same test pairs (checked). Runs of one denoiser (the same task_name
for a network, the same filter and parameters) are averaged: mean ± sample std over runs. The
speckled input's own PSNR / SSIM is the first row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import hydra
import matplotlib
import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from src.inference.checkpoint import load_denoiser  # noqa: E402
from src.inference.prestage import as_prestage  # noqa: E402
from src.runs import (  # noqa: E402
    CHECKPOINTS_DIR,
    SUMMARY_JSON,
    resolved_config_path,
    run_dir_of,
)

OUTPUTS = ("denoiser_quality.md", "denoiser_quality.csv", "examples.png")
INPUT = "none (the speckled input)"


def read_runs(dirs: list[Path]) -> list[dict]:
    runs = []
    for directory in dirs:
        for path in sorted(directory.rglob(f"{CHECKPOINTS_DIR}/{SUMMARY_JSON}")):
            summary = json.loads(path.read_text())
            if "psnr" not in summary.get("mean", {}):
                continue  # a segmentation summary
            run = run_dir_of(path)
            config = OmegaConf.load(resolved_config_path(run))
            runs.append({"run": run, "label": label(summary, config), **summary})
    if not runs:
        raise SystemExit(f"no src.train_denoiser summary.json under {', '.join(map(str, dirs))}")
    if len({round(r["mean"]["psnr_input"], 6) for r in runs}) > 1:
        raise SystemExit("the runs scored different test pairs (their inputs' PSNR differ)")
    return runs


def label(summary: dict, config) -> str:
    """A network: its experiment (task_name); a filter: its class and parameters."""
    denoiser = dict(summary["denoiser"])
    if summary["checkpoint"] is not None:
        return str(config.task_name)
    name = denoiser.pop("_target_").rsplit(".", 1)[-1]
    return f"{name} ({', '.join(f'{k}={v}' for k, v in denoiser.items())})"


def quality_table(runs: list[dict]) -> pd.DataFrame:
    rows = [
        {"denoiser": INPUT, "psnr": r["mean"]["psnr_input"], "ssim": r["mean"]["ssim_input"]}
        for r in runs
    ]
    rows = rows[:1] + [
        {"denoiser": r["label"], **{k: r["mean"][k] for k in ("psnr", "ssim")}} for r in runs
    ]
    table = pd.DataFrame(rows).groupby("denoiser", sort=False).agg(["mean", "std", "count"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    return table


def markdown(table: pd.DataFrame, runs: list[dict]) -> str:
    def cell(row, metric, fmt):
        mean, std, n = row[f"{metric}_mean"], row[f"{metric}_std"], int(row[f"{metric}_count"])
        return f"{mean:{fmt}}" if n == 1 else f"{mean:{fmt}} ± {std:{fmt}} ({n} runs)"

    lines = [
        "| denoiser | PSNR (dB) | SSIM |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {cell(row, 'psnr', '.2f')} | {cell(row, 'ssim', '.3f')} |"
            for name, row in table.iterrows()
        ),
    ]
    n = runs[0]["num_images"]
    return (
        "# Denoiser quality on the phantom test pairs (SYNTHETIC)\n\n"
        f"PSNR and SSIM (torchmetrics, per image, mean over the {n} test pairs) of each denoiser's "
        "output against the phantom rendered without speckle, at the segmentation input size. "
        "Several runs of one denoiser (one per fold): mean ± sample std over runs.\n\n"
        + "\n".join(lines)
        + "\n\nRuns: "
        + ", ".join(f"`{r['run']}`" for r in runs)
        + "\n"
    )


def examples(runs: list[dict], path: Path) -> None:
    """The first test pair through every denoiser (one run of each)."""
    pairs = dict(runs[0]["pairs"])
    pairs["sizes"] = {"train": 1, "val": 1, "test": 1}  # test pair 0 does not depend on them
    pair = hydra.utils.instantiate(pairs).splits()["test"][0]
    panels = {"speckled input": pair["image"], "clean (no speckle)": pair["target"]}
    for run in {r["label"]: r for r in runs}.values():
        if run["checkpoint"] is None:
            net = as_prestage(hydra.utils.instantiate(run["denoiser"]))
        else:
            net = load_denoiser(run["run"])[0].eval()
        with torch.no_grad():
            panels[run["label"]] = net(pair["image"][None])[0]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.6))
    for ax, (name, image) in zip(axes, panels.items(), strict=True):
        ax.imshow(np.asarray(image[0]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name.replace(" (", "\n").replace(", ", "\n").rstrip(")"), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    paths = [args.out / name for name in OUTPUTS]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"{', '.join(existing)} exist(s); nothing written (pass --overwrite)")
    runs = read_runs(args.dirs)
    table = quality_table(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    paths[0].write_text(markdown(table, runs))
    table.to_csv(paths[1], index_label="denoiser")
    examples(runs, paths[2])
    print(f"{len(runs)} runs; wrote {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
