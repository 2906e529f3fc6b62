"""Reader of the HC18 challenge layout (Zenodo 1327317) into a prepared dir.

    ROOT/training_set/NNN_HC.png, NNN_2HC.png, ...   800 x 540 grey B-mode images
    ROOT/training_set/NNN_HC_Annotation.png          the sonographer's head ellipse, an outline
    ROOT/training_set_pixel_size_and_HC.csv          filename,pixel size(mm),head circumference (mm)
    ROOT/test_set/NNN_HC.png + test_set_pixel_size.csv   no annotations: for src.predict only

The record may come in several parts (the 76-scan sample and the 300-scan subset, or the
challenge's own zips extracted side by side): every ``*pixel_size_and_HC.csv`` under ROOT with
a ``training_set/`` folder beside it is read, and a file name in two parts is an error.
Prepared index columns beyond the common ones: ``hc_mm`` (the CSV's head circumference) and
``hc_tertile`` (1-3, the stratum of the grouped splits: there are no planes). The subject is
the leading number (``010_2HC`` and ``010_HC`` are one subject).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from src.data.classes import HC18_HEAD
from src.data.prepared import write_png, write_prepared
from src.ellipse import ELLIPSE_FIELDS, fitted_ellipse_mask

log = logging.getLogger(__name__)

# 2: a filled annotation is inset by FILLED_INSET_PX to the sonographer's ellipse.
READER_VERSION = 2
# Copies whose annotations were filled keep the whole drawn line. Measured on the 376 filled
# scans of hc18-sample + hc18-train: a filled head measured as is reads 8.77 +- 0.38 px (SD)
# longer in circumference than the CSV's value, the same at every head size (correlation 0.06),
# i.e. ~0.7% (1.3 mm at 180 mm), a bias a network trained on it learns. The ellipse through the
# centres of the region's edge pixels, with semi-axes 0.94 px shorter, gives masks that measure
# -0.0 +- 0.4 px from the CSV (a quarter of the scans, measured with src.biometry.measure_head).
FILLED_INSET_PX = 0.94
TRAINING_CSV_SUFFIX = "pixel_size_and_HC.csv"
FILENAME, PIXEL_SIZE, HEAD_CIRCUMFERENCE = "filename", "pixel size(mm)", "head circumference (mm)"
# A scan NNN_HC.png's outline is NNN_HC_Annotation.png, beside it in training_set/.
OUTLINE = "_Annotation.png"
_HC18_NAME = re.compile(r"(\d+)_\d*HC(?:_|$)", re.IGNORECASE)
# The challenge's result file: the head ellipse per image in mm and radians.
SUBMISSION_CSV = "hc18_submission.csv"
SUBMISSION_COLUMNS = (
    "filename", "center_x_mm", "center_y_mm", "semi_axes_a_mm", "semi_axes_b_mm", "angle_rad"
)  # fmt: skip


class HC18LayoutError(ValueError):
    """ROOT does not look like the HC18 challenge layout."""


def hc18_subject(stem: str) -> str | None:
    """The subject of an HC18 name: its leading number, three digits (``10_2HC`` -> ``010``)."""
    match = _HC18_NAME.match(stem)
    return f"{int(match.group(1)):03d}" if match else None


def read_pixel_csv(
    path: Path,
    columns: tuple[str, ...] = (FILENAME, PIXEL_SIZE),
    optional: tuple[str, ...] = (),
) -> dict[str, dict]:
    """Rows of an HC18 CSV by file name, with ``columns`` (and those of ``optional`` the CSV
    has) as floats, besides ``filename``. The training CSV has the head circumference too,
    the test set's only the pixel size."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"pixel-size CSV {path} not found") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [c for c in columns if c not in header]
    if missing:
        raise HC18LayoutError(f"{path}: expected columns {list(columns)}, found {header}")
    columns = (*columns, *(c for c in optional if c in header))
    rows = {}
    for line, row in enumerate(reader, start=2):
        row = {key.strip(): (value or "").strip() for key, value in row.items() if key}
        try:
            values = {c: float(row[c]) for c in columns if c != FILENAME}
        except ValueError:
            raise HC18LayoutError(f"{path}:{line}: expected numbers in {row}") from None
        if row[FILENAME] in rows:
            raise HC18LayoutError(f"{path}:{line}: {row[FILENAME]} is listed twice")
        rows[row[FILENAME]] = values
    return rows


def write_submission(path: Path, ellipses: dict[str, dict | None]) -> Path:
    """The challenge's CSV: per image file name, its head ellipse in mm (``center_x``,
    ``center_y``, ``semi_axis_a``, ``semi_axis_b``, ``angle_rad`` as
    ``src.biometry.HeadMeasurement`` names them). An image without a head (None) keeps its
    row with empty cells, so a missing prediction is visible rather than dropped.

    The frame (the challenge names the columns, not the frame, and public submission scripts
    disagree): x is the image COLUMN and y the ROW, both from the centre of the top-left
    pixel, times the pixel size; ``semi_axes_a_mm`` >= ``semi_axes_b_mm``, a along the angle;
    ``angle_rad`` in [0, pi) from +x towards +y, i.e. clockwise on the displayed image:
    OpenCV's ``cv2.ellipse``/``fitEllipse`` frame (``src.ellipse.fit_ellipse``). Drawing a row
    with ``cv2.ellipse(center=(x, y) / pixel, axes=(a, b) / pixel, angle=degrees(angle))``
    reproduces the predicted head (tests/test_predict.py)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SUBMISSION_COLUMNS)
        for filename, ellipse in ellipses.items():
            values = [""] * 5 if ellipse is None else [f"{ellipse[k]:.6f}" for k in ELLIPSE_FIELDS]
            writer.writerow([filename, *values])
    missing = sum(ellipse is None for ellipse in ellipses.values())
    if missing:
        log.warning("%s: %d of %d images have no head ellipse", path, missing, len(ellipses))
    return path


def read_annotation(path: Path) -> np.ndarray:
    """An HC18 ``*_HC_Annotation.png`` (white ellipse outline on black, grey or RGB) as a
    filled boolean head mask; an already filled head is returned as it is.

    The outline is drawn a few pixels wide, centred on the sonographer's ellipse: filling it
    whole would put the head edge half a line width outside that ellipse. So the ellipse is
    fitted to the outline's pixel centres (which straddle it evenly) and the mask is the
    pixels whose centre lies inside it. A filled annotation (as in tests/fixtures/hc18) kept the
    whole line: its edge's ellipse is inset by ``FILLED_INSET_PX`` (measured, see there)."""
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError(f"{path}: not a readable image (expected an HC18 annotation PNG)")
    drawn = image > 127
    filled = ndimage.binary_fill_holes(drawn)
    if np.array_equal(filled, drawn):  # nothing enclosed: a filled head or a broken outline
        rows, cols = np.nonzero(drawn)
        extent = max(np.ptp(rows), np.ptp(cols)) + 1 if rows.size else 0
        # A head is thick (inscribed radius ~ a third of its extent), a line is not.
        if not rows.size or ndimage.distance_transform_edt(drawn).max() < 0.1 * extent:
            raise ValueError(
                f"{path}: expected a closed white head outline (or a filled head) on black; "
                f"found {rows.size} white pixels enclosing no region"
            )
        edge = filled & ~ndimage.binary_erosion(filled)
        rows, cols = np.nonzero(edge)
        return fitted_ellipse_mask(drawn.shape, rows, cols, FILLED_INSET_PX)
    rows, cols = np.nonzero(drawn)
    return fitted_ellipse_mask(drawn.shape, rows, cols)


def _parts(root: Path) -> list[Path]:
    """Folders under ROOT holding a training CSV and a training_set/ beside it."""
    parts = sorted(
        csv_path.parent
        for csv_path in root.rglob(f"*{TRAINING_CSV_SUFFIX}")
        if (csv_path.parent / "training_set").is_dir()
    )
    if not parts:
        found = sorted(p.name for p in root.iterdir())[:12] if root.is_dir() else []
        raise HC18LayoutError(
            f"{root} does not look like the HC18 challenge data: expected "
            f"training_set/ and training_set_{TRAINING_CSV_SUFFIX} (in ROOT or a folder below "
            f"it); found {found}"
        )
    return parts


def _tertiles(values: list[float]) -> list[int]:
    """1, 2, 3 for the lower, middle and upper third of ``values``."""
    cuts = np.quantile(values, [1 / 3, 2 / 3])
    return [int(np.searchsorted(cuts, value, side="right")) + 1 for value in values]


class HC18Reader:
    """The HC18 challenge layout as a ``src.data.prepared.Reader`` (conf/data/hc18.yaml)."""

    name = "hc18"
    version = READER_VERSION
    class_set = HC18_HEAD
    columns = ("hc_mm", "hc_tertile")
    in_channels = 1

    def prepare(self, raw_dir: Path, out_dir: Path, *, overwrite: bool = False) -> dict[str, Any]:
        raw_dir = Path(raw_dir)
        parts = _parts(raw_dir)

        def convert(staging: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            (staging / "images" / "training_set").mkdir(parents=True)
            (staging / "masks" / "training_set").mkdir(parents=True)
            rows, skipped, seen = [], [], {}
            test_images = 0
            for part in parts:
                csv_path = next(part.glob(f"*{TRAINING_CSV_SUFFIX}"))
                listed = read_pixel_csv(csv_path, (FILENAME, PIXEL_SIZE, HEAD_CIRCUMFERENCE))
                test_images += len(list((part / "test_set").glob("*.png")))
                for filename, values in sorted(listed.items()):
                    if filename in seen:
                        raise HC18LayoutError(
                            f"{filename} is in both {seen[filename]} and {csv_path}: "
                            "two parts of the record overlap"
                        )
                    seen[filename] = csv_path
                    row = self._convert_one(part, filename, values, staging, skipped)
                    if row is not None:
                        rows.append(row)
            if not rows:
                raise HC18LayoutError(f"{raw_dir}: no scan could be read; skipped: {skipped}")
            for row, tertile in zip(rows, _tertiles([r["hc_mm"] for r in rows]), strict=True):
                row["hc_tertile"] = tertile
            report = {
                "raw_dir": str(raw_dir),
                "reader": self.name,
                "parts": [str(p.relative_to(raw_dir)) for p in parts],
                "images": len(rows),
                "subjects": len({r["subject"] for r in rows}),
                "per_hc_tertile": dict(sorted(Counter(r["hc_tertile"] for r in rows).items())),
                "skipped": skipped,
                "test_set_images_not_prepared": test_images,
            }
            return rows, report

        report = write_prepared(raw_dir, out_dir, self, convert, overwrite=overwrite)
        log.info(
            "prepared %d HC18 scans (%d subjects) into %s; %d skipped",
            report["images"],
            report["subjects"],
            out_dir,
            len(report["skipped"]),
        )
        return report

    @staticmethod
    def _convert_one(
        part: Path, filename: str, values: dict, staging: Path, skipped: list
    ) -> dict[str, Any] | None:
        stem = Path(filename).stem
        image_path = part / "training_set" / filename
        annotation_path = part / "training_set" / f"{stem}{OUTLINE}"

        def skip(path: Path, reason: str) -> None:
            log.warning("skipped %s: %s", path, reason)
            skipped.append({"file": str(path), "reason": reason})

        image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            skip(image_path, "missing or unreadable image listed in the CSV")
            return None
        if not annotation_path.is_file():
            skip(annotation_path, "missing annotation")
            return None
        try:
            head = read_annotation(annotation_path)
        except ValueError as error:
            skip(annotation_path, str(error))
            return None
        if head.shape != image.shape:
            skip(annotation_path, f"annotation {head.shape} differs from image {image.shape}")
            return None
        row = {
            "image": f"images/training_set/{stem}.png",
            "mask": f"masks/training_set/{stem}.png",
            "subject": hc18_subject(stem) or stem,
            "pixel_size_mm": values[PIXEL_SIZE],
            "orig_width": image.shape[1],
            "orig_height": image.shape[0],
            "hc_mm": values[HEAD_CIRCUMFERENCE],
        }
        write_png(staging / row["image"], image)
        write_png(staging / row["mask"], head.astype(np.uint8))
        return row
