"""Reader of the LGG brain MRI layout (Buda et al. 2019; Kaggle mateuszbuda/lgg-mri-segmentation)
into a prepared dir.

    ROOT/kaggle_3m/<patient>/<patient>_<k>.tif        256 x 256 RGB: pre-contrast, FLAIR,
                                                      post-contrast MRI of slice k (1, 2, ...)
    ROOT/kaggle_3m/<patient>/<patient>_<k>_mask.tif   the FLAIR abnormality, 0 or 255
    ROOT/kaggle_3m/data.csv, README.md                clinical data: not read

ROOT may also be the ``kaggle_3m`` folder itself (the Kaggle archive holds a second copy under
``lgg-mri-segmentation/kaggle_3m``, which is then left alone). Every slice is kept, with or
without abnormality. Prepared: the slice as an RGB PNG (channels in the tif's order), the mask
as labels 0/1 of ``LGG``. Index columns beyond the common ones: ``slice`` (k, the position in
the patient's volume) and ``patient_tumour`` (1 if any slice of the patient holds abnormality:
the stratum of the grouped splits). The subject, and the volume of the per-patient Dice, is the
patient folder. The pixel size is not in the record: left empty.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from src.data.classes import LGG
from src.data.images import write_image
from src.data.prepared import write_png, write_prepared

log = logging.getLogger(__name__)

READER_VERSION = 1
RECORD_FOLDER = "kaggle_3m"
_SLICE_FILE = re.compile(r"(?P<patient>.+)_(?P<slice>\d+)(?P<mask>_mask)?\.tif", re.IGNORECASE)
MASK_VALUES = (0, 255)


class LGGLayoutError(ValueError):
    """ROOT does not look like the LGG (kaggle_3m) layout."""


def record_dir(root: Path) -> Path:
    """ROOT/kaggle_3m, or ROOT itself when it holds the patient folders."""
    root = Path(root)
    if (root / RECORD_FOLDER).is_dir():
        return root / RECORD_FOLDER
    if root.is_dir() and any(p.is_dir() and any(p.glob("*.tif")) for p in root.iterdir()):
        return root
    found = sorted(p.name for p in root.iterdir())[:12] if root.is_dir() else []
    raise LGGLayoutError(
        f"{root} does not look like the LGG data: expected {RECORD_FOLDER}/<patient>/"
        f"<patient>_<k>.tif and <patient>_<k>_mask.tif (in ROOT or ROOT/{RECORD_FOLDER}); "
        f"found {found}"
    )


def list_slices(patient_dir: Path) -> dict[int, dict[str, Path]]:
    """Slice number -> {"image": path, "mask": path} of one patient folder; a file that is not
    ``<patient>_<k>[_mask].tif`` or a slice without its image or its mask is an error."""
    slices: dict[int, dict[str, Path]] = defaultdict(dict)
    for path in sorted(p for p in patient_dir.iterdir() if not p.name.startswith(".")):
        match = _SLICE_FILE.fullmatch(path.name)
        if not path.is_file() or match is None or match["patient"] != patient_dir.name:
            raise LGGLayoutError(
                f"{path}: expected only files {patient_dir.name}_<k>.tif and "
                f"{patient_dir.name}_<k>_mask.tif in a patient folder"
            )
        slices[int(match["slice"])]["mask" if match["mask"] else "image"] = path
    for k, files in sorted(slices.items()):
        if "image" not in files:
            raise LGGLayoutError(f"{files['mask']}: a mask without its image (slice {k})")
        if "mask" not in files:
            raise LGGLayoutError(f"{files['image']}: an image without its mask (slice {k})")
    if not slices:
        raise LGGLayoutError(f"{patient_dir}: a patient folder without slices")
    return dict(slices)


def read_slice(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An RGB (H, W, 3) slice and its 0/1 mask (H, W), checked."""
    raw = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise LGGLayoutError(f"{image_path}: not a readable image")
    if raw.dtype != np.uint8 or raw.ndim != 3 or raw.shape[2] != 3:
        raise LGGLayoutError(
            f"{image_path}: {raw.dtype} {raw.shape}; expected an 8-bit 3-channel (RGB) slice"
        )
    image = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)  # the tif is RGB; OpenCV decodes BGR
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise LGGLayoutError(f"{mask_path}: not a readable image")
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise LGGLayoutError(
            f"{mask_path}: {mask.dtype} {mask.shape}; expected a single-channel 8-bit mask"
        )
    if mask.shape != image.shape[:2]:
        raise LGGLayoutError(
            f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but {image_path.name} is "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    values = set(np.unique(mask).tolist())
    if not values <= set(MASK_VALUES):
        raise LGGLayoutError(f"{mask_path}: values {sorted(values)}; expected {MASK_VALUES}")
    return image, (mask == 255).astype(np.uint8)


class LGGReader:
    """The LGG kaggle_3m layout as a ``src.data.prepared.Reader`` (conf/data/lgg.yaml)."""

    name = "lgg"
    version = READER_VERSION
    class_set = LGG
    columns = ("slice", "patient_tumour")
    in_channels = 3

    def prepare(self, raw_dir: Path, out_dir: Path, *, overwrite: bool = False) -> dict[str, Any]:
        raw_dir = Path(raw_dir)
        record = record_dir(raw_dir)
        patients = sorted(p for p in record.iterdir() if p.is_dir() and not p.name.startswith("."))

        def convert(staging: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            tumour_slices: dict[str, int] = {}
            for patient_dir in patients:
                patient = patient_dir.name
                (staging / "images" / patient).mkdir(parents=True)
                (staging / "masks" / patient).mkdir(parents=True)
                first = len(rows)
                for k, files in sorted(list_slices(patient_dir).items()):
                    image, mask = read_slice(files["image"], files["mask"])
                    stem = f"{patient}_{k}"
                    row = {
                        "image": f"images/{patient}/{stem}.png",
                        "mask": f"masks/{patient}/{stem}.png",
                        "subject": patient,
                        "pixel_size_mm": None,
                        "orig_width": image.shape[1],
                        "orig_height": image.shape[0],
                        "slice": k,
                    }
                    write_image(staging / row["image"], image)
                    write_png(staging / row["mask"], mask)
                    rows.append(row | {"_tumour": bool(mask.any())})
                tumour_slices[patient] = sum(row["_tumour"] for row in rows[first:])
                for row in rows[first:]:
                    row["patient_tumour"] = int(tumour_slices[patient] > 0)
            if not rows:
                raise LGGLayoutError(f"{record}: no patient folder with slices")
            report = {
                "raw_dir": str(raw_dir),
                "reader": self.name,
                "record": str(record.relative_to(raw_dir)) if record != raw_dir else ".",
                "patients": len(patients),
                "slices": len(rows),
                "slices_with_tumour": sum(tumour_slices.values()),
                "patients_with_tumour": sum(n > 0 for n in tumour_slices.values()),
                "per_patient": {
                    patient: {
                        "slices": sum(row["subject"] == patient for row in rows),
                        "slices_with_tumour": n,
                    }
                    for patient, n in tumour_slices.items()
                },
            }
            return rows, report

        report = write_prepared(raw_dir, out_dir, self, convert, overwrite=overwrite)
        log.info(
            "prepared %d LGG slices of %d patients (%d slices with tumour) into %s",
            report["slices"],
            report["patients"],
            report["slices_with_tumour"],
            out_dir,
        )
        return report
