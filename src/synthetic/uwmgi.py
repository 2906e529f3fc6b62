"""A SYNTHETIC record in the exact UW-Madison GI layout (src.data.readers.uwmgi), for tests and
``fast_dev_run`` examples without the Kaggle download.

Each case-day is a small volume: a bright body ellipse on black, and three organ ellipses
(stomach, large bowel, small bowel) that move and grow smoothly from slice to slice. The first
and last slice of every volume hold no organ (empty train.csv rows, as the real record's
slices outside the abdomen), and the two bowels overlap in the middle slices (multi-label).
Images are 16-bit PNGs named ``slice_<SSSS>_<W>_<H>_<pw>_<ph>.png``, with an intensity scale
that differs per case-day (as MRI's does); train.csv holds the RLE of every (slice, organ).
Numbers measured on it say nothing about real MRI.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from src.data.classes import UWMGI
from src.data.readers.uwmgi import CSV_COLUMNS, CSV_NAME, rle_encode

# Two image sizes (width, height) and pixel spacings, as the record has several.
SIZES = ((64, 56, 1.50), (56, 64, 1.63))


def _ellipse(shape: tuple[int, int], centre, axes, angle: float = 0.0) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    centre = (int(round(centre[0])), int(round(centre[1])))
    axes = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
    return mask.astype(bool)


def render_volume(
    rng: np.random.Generator, width: int, height: int, n_slices: int
) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    """uint16 slices and per-slice organ masks (name -> bool (H, W)) of one case-day."""
    shape = (height, width)
    gain = rng.uniform(300, 3000)  # the volume's own intensity scale
    body = _ellipse(shape, (width / 2, height / 2), (0.45 * width, 0.42 * height))
    offset = rng.uniform(-0.05, 0.05, 2) * (width, height)
    images, masks = [], []
    for s in range(n_slices):
        t = s / max(1, n_slices - 1)  # 0 .. 1 through the volume
        inside = 0 < s < n_slices - 1  # the edge slices are empty
        grow = np.sin(np.pi * t)  # organs largest mid-volume
        organs = {name: np.zeros(shape, bool) for name in UWMGI.foreground}
        if inside:
            cx, cy = width / 2 + offset[0], height / 2 + offset[1]
            organs["stomach"] = _ellipse(
                shape, (cx + 0.18 * width, cy - 0.15 * height), (0.12 * width * grow + 2, 7)
            )
            organs["large_bowel"] = _ellipse(
                shape, (cx - 0.12 * width, cy + 0.08 * height), (8, 0.18 * height * grow + 2), 20
            )
            organs["small_bowel"] = (
                _ellipse(shape, (cx - 0.02 * width, cy + 0.12 * height), (0.15 * width * grow, 5))
                if s >= 2
                else organs["small_bowel"]
            )
        image = 0.35 * body.astype(np.float32)
        for level, name in zip((0.7, 0.9, 0.55), UWMGI.foreground, strict=True):
            image[organs[name]] = level
        image = cv2.GaussianBlur(image, (0, 0), 0.8) + rng.normal(0, 0.04, shape) * body
        images.append(np.clip(image * gain, 0, 65535).astype(np.uint16))
        masks.append(organs)
    return images, masks


def write_uwmgi_record(
    out_dir: Path,
    *,
    n_cases: int = 6,
    days_per_case: int = 2,
    slices_per_day: int = 6,
    seed: int = 0,
) -> Path:
    """Write ``n_cases`` cases x ``days_per_case`` case-days x ``slices_per_day`` slices into
    ``out_dir`` (missing or empty): ``train.csv`` and ``train/case*/case*_day*/scans/*.png``.
    Deterministic for a given ``seed``."""
    out_dir = Path(out_dir)
    if n_cases < 1 or days_per_case < 1 or slices_per_day < 3:
        raise ValueError(
            f"need n_cases >= 1, days_per_case >= 1, slices_per_day >= 3; got {n_cases}, "
            f"{days_per_case}, {slices_per_day}"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; choose a new out_dir")
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        case = f"case{101 + c}"
        width, height, spacing = SIZES[c % len(SIZES)]
        for d in range(days_per_case):
            case_day = f"{case}_day{d * 7}"
            scans = out_dir / "train" / case / case_day / "scans"
            scans.mkdir(parents=True)
            images, masks = render_volume(rng, width, height, slices_per_day)
            for s, (image, organs) in enumerate(zip(images, masks, strict=True)):
                number = 1 + 2 * s  # slice numbers need not be consecutive
                name = f"slice_{number:04d}_{width}_{height}_{spacing:.2f}_{spacing:.2f}.png"
                if not cv2.imwrite(str(scans / name), image):
                    raise OSError(f"could not write {scans / name}")
                slice_id = f"{case_day}_slice_{number:04d}"
                rows += [(slice_id, n, rle_encode(organs[n])) for n in UWMGI.foreground]
    with (out_dir / CSV_NAME).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
    return out_dir
