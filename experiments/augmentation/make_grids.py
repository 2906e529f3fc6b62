"""One PNG grid per augmentation preset in conf/augmentation: the same four phantom scans
(rows), as cached for training (left column) and after six draws of the preset, with the
mask's contours in the class colours. Also prints each preset's time per call.

    .venv/bin/python experiments/augmentation/make_grids.py            # --size 128 192 --seed 0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import hydra
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from omegaconf import OmegaConf

from src.data.cache import resize_image, resize_mask
from src.data.classes import FETAL_HEAD
from src.synthetic.phantom import render_scan

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "conf" / "augmentation").glob("*.yaml"))
N_DRAWS = 6
GAP, HEADER = 4, 50  # pixels between tiles, above them
# Scans with and without CSP / LV, at the record's size and a typical pixel size.
SCANS = [(True, True), (True, False), (False, True), (True, True)]


def phantom_scans(size: tuple[int, int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rendered at the record's 959 x 661 and resized as the training cache does."""
    scans = []
    for i, (has_csp, has_lv) in enumerate(SCANS):
        rng = np.random.default_rng([seed, i])
        scan = render_scan(rng, has_csp=has_csp, has_lv=has_lv, pixel_size_mm=0.15)
        scans.append((resize_image(scan.image, size), resize_mask(scan.labels, size)))
    return scans


def with_contours(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The grey image as RGB with each foreground class outlined in its display colour."""
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    for label in range(1, FETAL_HEAD.num_classes):
        contours, _ = cv2.findContours(
            (mask == label).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(rgb, contours, -1, FETAL_HEAD.display_colours[label], 1)
    return rgb


def draw_grid(name: str, transform, scans, out: Path) -> None:
    """Write ``out`` with every tile at its own pixel size."""
    height, width = scans[0][0].shape
    rows, columns = len(scans), N_DRAWS + 1
    mosaic = np.full((rows * (height + GAP), columns * (width + GAP), 3), 255, np.uint8)
    for row, (image, mask) in enumerate(scans):
        tiles = [(image, mask)]
        for _ in range(N_DRAWS):
            drawn = transform(image=image, mask=mask)
            tiles.append((drawn["image"], drawn["mask"]))
        for column, tile in enumerate(tiles):
            y, x = row * (height + GAP), column * (width + GAP)
            mosaic[y : y + height, x : x + width] = with_contours(*tile)
    dpi, total_height = 100, mosaic.shape[0] + HEADER
    fig = Figure(figsize=(mosaic.shape[1] / dpi, total_height / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, mosaic.shape[0] / total_height))
    ax.imshow(mosaic)
    ax.set_axis_off()
    fig.text(0.005, 1 - 4 / total_height, f"augmentation={name}", va="top", weight="bold")
    legend = [
        Patch(color=np.array(colour) / 255, label=label)
        for label, colour in zip(FETAL_HEAD.foreground, FETAL_HEAD.display_colours[1:], strict=True)
    ]
    fig.legend(handles=legend, loc="upper right", ncol=len(legend), frameon=False, fontsize=9)
    for column in range(columns):
        x = (column * (width + GAP) + width / 2) / mosaic.shape[1]
        title = "cached" if column == 0 else f"draw {column}"
        fig.text(x, (mosaic.shape[0] + 3) / total_height, title, ha="center", va="bottom")
    fig.savefig(out)


def seconds_per_call(transform, scans, calls: int = 100, repeats: int = 3) -> float:
    """Mean over ``calls`` calls cycling through the scans, best of ``repeats`` (the least
    disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            image, mask = scans[i % len(scans)]
            transform(image=image, mask=mask)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[128, 192], metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--overwrite", action="store_true", help="replace existing grids")
    args = parser.parse_args()
    targets = {path.stem: args.out / f"grid_{path.stem}.png" for path in PRESETS}
    existing = [str(t) for t in targets.values() if t.exists()]
    if existing and not args.overwrite:
        parser.error(f"{', '.join(existing)} exist; pass --overwrite to replace them")
    args.out.mkdir(parents=True, exist_ok=True)
    scans = phantom_scans(tuple(args.size), args.seed)
    for path in PRESETS:
        transform = hydra.utils.instantiate(OmegaConf.load(path))
        transform.set_random_seed(args.seed)
        draw_grid(path.stem, transform, scans, targets[path.stem])
        per_call = seconds_per_call(transform, scans)
        print(f"{path.stem:12s} {per_call * 1e3:6.2f} ms per call   -> {targets[path.stem]}")


if __name__ == "__main__":
    main()
