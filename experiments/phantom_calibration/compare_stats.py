"""Compare B-mode phantoms with the real HC18 scans in tests/fixtures/hc18 (8 of them), side
by side.

Run from the repository root:
    .venv/bin/python experiments/phantom_calibration/compare_stats.py [--n 24] [--seed 0]

Phantoms are rendered at the real images' size (800 x 540) with the real images' pixel
sizes. The same estimators run on both: the fan is what is not black padding, the head
is the sonographer's filled ellipse (real) or the label mask (phantom).
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from src.data.classes import FETAL_HEAD  # noqa: E402
from src.synthetic.phantom import render_scan  # noqa: E402

SAMPLE = ROOT / "tests" / "fixtures" / "hc18"
# The 8 scans this calibration was made on (picked to span the range of head sizes).
CALIBRATION_SCANS = (
    "014_2HC.png", "084_HC.png", "182_HC.png", "224_HC.png",
    "462_HC.png", "658_HC.png", "742_HC.png", "784_HC.png",
)  # fmt: skip
FIGURE = Path(__file__).with_name("phantom_vs_real.png")
REAL_SIZE = (800, 540)  # width, height of the HC18 images
WINDOW = 24  # px, side of the windows searched for homogeneous speckle


@dataclass
class Scan:
    name: str
    image: np.ndarray  # uint8 (H, W)
    head: np.ndarray  # bool (H, W)
    labels: np.ndarray | None = None  # phantom only


def read_real_scans() -> tuple[list[Scan], list[float]]:
    csv_path = SAMPLE / "training_set_pixel_size_and_HC.csv"
    with csv_path.open(newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["filename"] in CALIBRATION_SCANS]
    if not rows or "pixel size(mm)" not in rows[0]:
        raise ValueError(f"{csv_path}: expected a 'filename,pixel size(mm),...' header")
    scans, pixel_sizes = [], []
    for row in rows:
        image_path = SAMPLE / "training_set" / row["filename"]
        annotation_path = image_path.with_name(image_path.stem + "_Annotation.png")
        image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
        annotation = cv2.imread(str(annotation_path), cv2.IMREAD_GRAYSCALE)
        if image is None or annotation is None:
            raise FileNotFoundError(f"cannot read {image_path} or {annotation_path}")
        scans.append(Scan(image_path.stem, image, filled_outline(annotation > 0)))
        pixel_sizes.append(float(row["pixel size(mm)"]))
    return scans, pixel_sizes


def filled_outline(drawn: np.ndarray) -> np.ndarray:
    """Head region from an annotation drawn as an outline or already filled."""
    contours, _ = cv2.findContours(drawn.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros(drawn.shape, np.uint8)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def render_phantoms(n: int, seed: int, pixel_sizes: list[float]) -> list[Scan]:
    """Phantoms with the real scans' pixel sizes, CSP / LV drawn as often as in the dataset."""
    rng = np.random.default_rng(seed)
    scans = []
    for i in range(n):
        scan = render_scan(
            rng,
            *REAL_SIZE,
            has_csp=bool(rng.uniform() < 0.5),
            has_lv=bool(rng.uniform() < 0.4),
            pixel_size_mm=pixel_sizes[i % len(pixel_sizes)],
        )
        scans.append(Scan(f"phantom {i}", scan.image, scan.labels > 0, scan.labels))
    return scans


def outside_fan(image: np.ndarray) -> np.ndarray:
    """Black padding: zero-valued areas that touch the image border. The opening keeps
    thin chains of black speckle from joining dark fluid inside the fan to the padding."""
    zero = cv2.morphologyEx((image == 0).astype(np.uint8), cv2.MORPH_OPEN, np.ones((7, 7)))
    count, components = cv2.connectedComponents(zero)
    border = np.unique(
        np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]])
    )
    return np.isin(components, border[border > 0])


def erode(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)


def speckle_windows(image: np.ndarray, allowed: np.ndarray) -> tuple[float, float, float]:
    """Mean/std of the grey values and speckle grain width and height (px) in the most
    homogeneous windows:
    those whose blurred (speckle-free) image varies least, among windows of tissue (mean
    grey > 15) fully inside ``allowed``."""
    img = image.astype(np.float32)
    blurred = cv2.GaussianBlur(img, (0, 0), 6)
    candidates = []
    for y in range(0, img.shape[0] - WINDOW, WINDOW // 2):
        for x in range(0, img.shape[1] - WINDOW, WINDOW // 2):
            if not allowed[y : y + WINDOW, x : x + WINDOW].all():
                continue
            patch = img[y : y + WINDOW, x : x + WINDOW]
            if patch.mean() > 15:
                trend = blurred[y : y + WINDOW, x : x + WINDOW].std() / patch.mean()
                candidates.append((trend, patch))
    if not candidates:
        return float("nan"), float("nan"), float("nan")
    candidates.sort(key=lambda c: c[0])
    best = [patch for _, patch in candidates[: max(3, len(candidates) // 10)]]
    ratio = np.median([p.mean() / p.std() for p in best])
    width = np.median([grain_size(p, axis=1) for p in best])
    height = np.median([grain_size(p, axis=0) for p in best])
    return float(ratio), float(width), float(height)


def grain_size(patch: np.ndarray, axis: int) -> float:
    """Speckle grain size along an axis: lag (px) where the autocorrelation falls to 1/2."""
    centred = patch - patch.mean()
    spectrum = np.abs(np.fft.fft2(centred, s=(2 * WINDOW, 2 * WINDOW))) ** 2
    autocorrelation = np.real(np.fft.ifft2(spectrum))
    profile = autocorrelation[0, :WINDOW] if axis == 1 else autocorrelation[:WINDOW, 0]
    below = np.nonzero(profile / profile[0] < 0.5)[0]
    return float(below[0]) if below.size else float(WINDOW)


def scan_statistics(scan: Scan) -> dict[str, float]:
    image = scan.image.astype(np.float32)
    fan = ~outside_fan(scan.image)
    head = scan.head
    head_radius = np.sqrt(head.sum() / np.pi)
    skull_px = max(3, round(0.08 * head_radius))
    skull_band = head & ~erode(head, skull_px)
    interior = erode(head, 2 * skull_px)
    tissue = fan & ~cv2.dilate(head.astype(np.uint8), np.ones((31, 31))).astype(bool)
    stats = {}
    for region_name, region in (("head", head & fan), ("outside head, in fan", fan & ~head)):
        values = image[region]
        stats[f"{region_name}: mean"] = values.mean()
        stats[f"{region_name}: std"] = values.std()
        for q in (5, 50, 95):
            stats[f"{region_name}: p{q}"] = np.percentile(values, q)
    for name, region in (("skull band", skull_band), ("head interior", interior)):
        for q in (95, 99):
            stats[f"{name}: p{q}"] = np.percentile(image[region], q)
    ratio, grain_width, grain_height = speckle_windows(scan.image, tissue)
    stats["speckle mean/std (tissue)"] = ratio
    stats["speckle grain width px"] = grain_width
    stats["speckle grain height px"] = grain_height
    stats["black (outside fan) %"] = 100 * (~fan).mean()
    stats["pixels == 0 %"] = 100 * (scan.image == 0).mean()
    return stats


def print_table(real: list[dict], phantom: list[dict], n_real: int, n_phantom: int) -> None:
    real_title, phantom_title = f"real (n={n_real})", f"phantom (n={n_phantom})"
    header = f"{'statistic (grey 0-255)':34s} {real_title:>16s} {phantom_title:>18s}"
    print(header)
    print("-" * len(header))
    for key in real[0]:
        r = np.array([s[key] for s in real], float)
        p = np.array([s[key] for s in phantom], float)
        print(
            f"{key:34s} {np.nanmean(r):8.1f} ± {np.nanstd(r):5.1f} "
            f"{np.nanmean(p):10.1f} ± {np.nanstd(p):5.1f}"
        )


def labelled(image: np.ndarray, title: str) -> np.ndarray:
    panel = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    cv2.rectangle(panel, (0, 0), (panel.shape[1], 34), (0, 0, 0), thickness=cv2.FILLED)
    cv2.putText(panel, title, (10, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    return panel


def label_overlay(scan: Scan) -> np.ndarray:
    colours = np.array(FETAL_HEAD.display_colours, np.uint8)[:, ::-1]  # RGB -> BGR
    grey = cv2.cvtColor(scan.image, cv2.COLOR_GRAY2BGR)
    coloured = colours[scan.labels]
    blend = cv2.addWeighted(grey, 0.6, coloured, 0.4, 0)
    return np.where(scan.labels[..., None] > 0, blend, grey)


def write_figure(real: Scan, phantom: Scan) -> None:
    gap = np.full((real.image.shape[0], 12, 3), 255, np.uint8)
    figure = np.hstack(
        [
            labelled(real.image, f"real: HC18 {real.name}"),
            gap,
            labelled(phantom.image, "phantom (sonoseg)"),
            gap,
            labelled(label_overlay(phantom), "phantom labels: brain, CSP, LV"),
        ]
    )
    # Three 800 px panels are more than a README needs; 3/4 size keeps the file small.
    small = cv2.resize(figure, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(FIGURE), small, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="number of phantoms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure-real", default="224_HC", help="real image shown in the figure")
    parser.add_argument("--figure-seed", type=int, default=6, help="seed of the phantom shown")
    args = parser.parse_args()
    real, pixel_sizes = read_real_scans()
    phantoms = render_phantoms(args.n, args.seed, pixel_sizes)
    print_table(
        [scan_statistics(s) for s in real],
        [scan_statistics(s) for s in phantoms],
        len(real),
        len(phantoms),
    )
    by_name = {s.name: s for s in real}
    if args.figure_real not in by_name:
        raise KeyError(f"--figure-real {args.figure_real!r}: not in {sorted(by_name)}")
    # The phantom shown has CSP and LV and the real image's pixel size, for a fair look.
    shown = by_name[args.figure_real]
    scan = render_scan(
        np.random.default_rng(args.figure_seed),
        *REAL_SIZE,
        has_csp=True,
        has_lv=True,
        pixel_size_mm=pixel_sizes[real.index(shown)],
    )
    write_figure(shown, Scan("phantom", scan.image, scan.labels > 0, scan.labels))
    print(f"\nfigure: {FIGURE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
