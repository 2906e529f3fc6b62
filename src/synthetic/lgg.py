"""A SYNTHETIC record in the exact LGG kaggle_3m layout (src.data.readers.lgg), for tests and
``fast_dev_run`` examples without the Kaggle download.

Each patient is a small volume of axial slices: a head ellipse whose three channels
(pre-contrast, FLAIR, post-contrast) differ in brightness, with speckle-free noise, and, for
patients with an abnormality, a blob that is bright in FLAIR (the green channel, as in the
record), grows and shrinks over a run of middle slices and is absent from the first and last
slices. Some patients have no abnormality at all, so both strata of the split exist. Slices are
uncompressed RGB tifs, masks single-channel 0/255 tifs, named as in the record. Numbers
measured on it say nothing about real MRI.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from src.data.readers.lgg import RECORD_FOLDER

# Sites of TCGA-LGG patient names (TCGA_<site>_<id>_<date>).
SITES = ("CS", "DU", "EZ", "FG", "HT")
NO_COMPRESSION = [cv2.IMWRITE_TIFF_COMPRESSION, 1]  # the record's tifs are uncompressed


def patient_names(n_patients: int) -> list[str]:
    return [
        f"TCGA_{SITES[i % len(SITES)]}_{4941 + i}_{19960909 + 10000 * i}" for i in range(n_patients)
    ]


def _disc(shape: tuple[int, int], centre, axes) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    centre = (int(round(centre[0])), int(round(centre[1])))
    axes = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    return mask.astype(bool)


def render_patient(
    rng: np.random.Generator, size: int, n_slices: int, tumour: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGB (size, size, 3) uint8 slices and bool masks of one patient."""
    shape = (size, size)
    brightness = rng.uniform([70, 90, 80], [110, 130, 120])  # per channel
    lesion_centre = rng.uniform(0.35, 0.65, 2) * size
    lesion_radius = rng.uniform(0.08, 0.14) * size
    # The abnormality spans the middle slices (never the first or the last).
    start, stop = 1, n_slices - 1
    images, masks = [], []
    for k in range(n_slices):
        head_scale = 0.3 + 0.12 * np.sin(np.pi * (k + 0.5) / n_slices)
        head = _disc(shape, (size / 2, size / 2), (head_scale * size, head_scale * size * 1.2))
        image = np.zeros((*shape, 3), np.float32)
        image[head] = brightness
        lesion = np.zeros(shape, bool)
        if tumour and start <= k < stop:
            grow = np.sin(np.pi * (k - start + 0.5) / (stop - start))
            lesion = (
                _disc(shape, lesion_centre, (lesion_radius * grow, lesion_radius * grow)) & head
            )
            image[lesion] += (20, 110, 40)  # bright in FLAIR, less so elsewhere
        image += rng.normal(0, 6, image.shape) * head[..., None]
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
        masks.append(lesion)
    return images, masks


def write_lgg_record(
    out: Path,
    n_patients: int = 10,
    slices_per_patient: tuple[int, int] = (6, 9),
    size: int = 256,
    tumour_free: int = 3,
    seed: int = 0,
) -> dict:
    """Write ``out/kaggle_3m/<patient>/<patient>_<k>.tif`` + ``_mask.tif`` (k from 1) and a
    data.csv naming the patients; the last ``tumour_free`` patients have no abnormality.
    Returns {patient: number of slices with abnormality}."""
    if not 0 <= tumour_free <= n_patients:
        raise ValueError(f"tumour_free={tumour_free}: expected 0..n_patients={n_patients}")
    rng = np.random.default_rng(seed)
    record = Path(out) / RECORD_FOLDER
    record.mkdir(parents=True)
    names = patient_names(n_patients)
    counts = {}
    for i, patient in enumerate(names):
        folder = record / patient
        folder.mkdir()
        n_slices = int(rng.integers(slices_per_patient[0], slices_per_patient[1] + 1))
        tumour = i < n_patients - tumour_free
        images, masks = render_patient(rng, size, n_slices, tumour)
        for k, (image, mask) in enumerate(zip(images, masks, strict=True), start=1):
            bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR as RGB
            cv2.imwrite(str(folder / f"{patient}_{k}.tif"), bgr, NO_COMPRESSION)
            mask_255 = mask.astype(np.uint8) * 255
            cv2.imwrite(str(folder / f"{patient}_{k}_mask.tif"), mask_255, NO_COMPRESSION)
        counts[patient] = int(sum(mask.any() for mask in masks))
    with (record / "data.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Patient", "death01"])
        writer.writerows([name.rsplit("_", 1)[0], ""] for name in names)
    return counts
