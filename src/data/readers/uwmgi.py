"""Reader of the UW-Madison GI Tract Image Segmentation layout (Kaggle 2022) into a prepared dir.

    ROOT/train.csv          id,class,segmentation: one row per slice and organ (large_bowel,
                            small_bowel, stomach); segmentation = RLE (see ``rle_decode``) or
                            empty (organ absent)
    ROOT/train/case<N>/case<N>_day<D>/scans/slice_<SSSS>_<W>_<H>_<pw>_<ph>.png
                            16-bit grey MRI slice; width, height and pixel spacing (mm) in the name

A case-day is one MRI volume; its slices, ordered by slice number, are neighbours (2.5D input,
``data.context_slices``). Organs overlap, so masks are multi-label: one uint8 bitmask per
slice (``src.data.classes.to_bitmask``, bit k = class k + 1 of ``UWMGI``).

Intensity: the 16-bit values have no absolute scale (they differ between scanners, sessions
and coil set-ups), so each case-day volume is scaled to 8 bits once, at prepare time, from its
own 0.5th and 99.5th percentiles (``VOLUME_PERCENTILES``) over all its slices: one mapping per
volume keeps neighbouring slices comparable (per-slice scaling would brighten a slice whose
brightest tissue left the field, which 2.5D stacking would see as a change of anatomy), and
the percentiles, not min and max, keep a few hot voxels from darkening the whole volume.

Index columns beyond the common ones: ``case_day`` (the volume), ``slice`` (its slice number),
``organs`` (the organs present, e.g. ``large_bowel+stomach``, or ``none``: the stratum) and
``uwmgi_id`` (the competition's id, for submission CSVs). ``subject`` is the case: every day
of a case is in one split. Slices listed in train.csv without an image, or with a bad RLE, are
skipped and named in prepare_report.json; scans without train.csv rows (the hidden test set's
layout) are counted there, not prepared.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from src.data.classes import UWMGI, to_bitmask
from src.data.prepared import write_png, write_prepared

log = logging.getLogger(__name__)

READER_VERSION = 1
CSV_NAME = "train.csv"
CSV_COLUMNS = ("id", "class", "segmentation")
VOLUME_PERCENTILES = (0.5, 99.5)
SCAN_NAME = re.compile(
    r"slice_(?P<slice>\d+)_(?P<width>\d+)_(?P<height>\d+)_(?P<pw>[\d.]+)_(?P<ph>[\d.]+)\.png$"
)
ID_PATTERN = re.compile(r"(?P<case_day>(?P<case>case\d+)_day\d+)_slice_(?P<slice>\d+)$")
# The competition's submission file.
SUBMISSION_COLUMNS = ("id", "class", "predicted")


class UWMGILayoutError(ValueError):
    """ROOT does not look like the UW-Madison GI layout."""


# ---------------------------------------------------------------------------- RLE


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The competition's run-length encoding -> bool (H, W) mask.

    ``rle`` is ``"start length start length ..."``: 1-based starts into the image flattened
    row-major (C order: pixel (r, c) is r * W + c + 1); an empty string is an empty mask.
    Raises ValueError for odd counts, non-numbers, runs outside the image or overlapping runs.
    """
    height, width = shape
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)})")
    try:
        values = np.asarray(tokens, dtype=np.int64).reshape(-1, 2)
    except ValueError:
        raise ValueError(f"RLE holds a value that is not an integer: {rle[:60]!r}") from None
    flat = np.zeros(height * width, dtype=bool)
    previous_end = 0
    for start, length in values:
        if start < 1 or length < 1 or start - 1 + length > flat.size or start - 1 < previous_end:
            raise ValueError(
                f"RLE run ({start}, {length}) is outside a {width}x{height} image, empty or "
                "not after the previous run"
            )
        flat[start - 1 : start - 1 + length] = True
        previous_end = start - 1 + length
    return flat.reshape(height, width)


def rle_encode(mask: np.ndarray) -> str:
    """bool (H, W) mask -> the competition's RLE (``rle_decode``'s inverse; '' when empty)."""
    flat = np.concatenate([[0], np.asarray(mask, dtype=np.uint8).ravel(order="C"), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # 0-based starts and ends of runs
    starts, ends = edges[::2], edges[1::2]
    return " ".join(f"{s + 1} {e - s}" for s, e in zip(starts, ends, strict=True))


def write_submission(path: Path, rows: Iterable[tuple[str, str, np.ndarray]]) -> Path:
    """The competition's CSV ``id,class,predicted``: one row per (slice id, class, bool mask),
    the mask as ``rle_encode``, empty where nothing is predicted."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(SUBMISSION_COLUMNS)
        for slice_id, class_name, mask in rows:
            writer.writerow([slice_id, class_name, rle_encode(mask)])
    return path


# ---------------------------------------------------------------------------- scans


def parse_scan_name(path: Path) -> dict[str, Any] | None:
    """Slice number, width, height and pixel spacing (mm) from a scan's file name; None if
    the name does not follow ``slice_<SSSS>_<W>_<H>_<pw>_<ph>.png``."""
    match = SCAN_NAME.match(Path(path).name)
    if match is None:
        return None
    return {
        "slice": int(match["slice"]),
        "width": int(match["width"]),
        "height": int(match["height"]),
        "pixel_width_mm": float(match["pw"]),
        "pixel_height_mm": float(match["ph"]),
    }


def list_scans(root: Path) -> dict[str, dict[str, Any]]:
    """Every scan under ROOT/train and ROOT/test (or ROOT itself holding case folders), by
    competition id (``case<N>_day<D>_slice_<SSSS>``): its path, case, case-day and the name's
    fields. Files whose name does not parse are listed under ``"__unparsed__"``."""
    bases = [root / part for part in ("train", "test") if (root / part).is_dir()] or [root]
    scans: dict[str, dict[str, Any]] = {}
    paths = sorted(p for base in bases for p in base.glob("case*/case*_day*/scans/*.png"))
    for path in paths:
        fields = parse_scan_name(path)
        case_day = path.parent.parent.name
        if fields is None:
            scans.setdefault("__unparsed__", {"paths": []})["paths"].append(str(path))
            continue
        scan_id = f"{case_day}_slice_{fields['slice']:04d}"
        scans[scan_id] = {
            "path": path,
            "case": path.parent.parent.parent.name,
            "case_day": case_day,
            **fields,
        }
    return scans


def scale_volume(volume: Sequence[np.ndarray]) -> list[np.ndarray]:
    """16-bit slices of one volume -> uint8, by the volume's own ``VOLUME_PERCENTILES``
    (see the module docstring); a constant volume becomes 0."""
    values = np.concatenate([np.asarray(s, dtype=np.float32).ravel() for s in volume])
    low, high = np.percentile(values, VOLUME_PERCENTILES)
    scale = 255.0 / (high - low) if high > low else 0.0
    return [
        np.rint(np.clip((np.asarray(s, np.float32) - low) * scale, 0, 255)).astype(np.uint8)
        for s in volume
    ]


def read_scan(path: Path, expected: tuple[int, int]) -> np.ndarray:
    """A scan PNG as it is (16-bit grey), checked against the (H, W) its name states."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 2:
        raise ValueError(f"{path}: not a readable single-channel PNG")
    if image.shape != expected:
        raise ValueError(
            f"{path}: image is {image.shape[1]}x{image.shape[0]}, its name says "
            f"{expected[1]}x{expected[0]}"
        )
    return image


def read_volumes(
    root: Path, ids: Iterable[str] | None = None, errors: list[dict] | None = None
) -> dict[str, dict[str, Any]]:
    """8-bit slices (``scale_volume``) of the scans under ROOT, by id, with the name's fields;
    ``ids``: only these (their volumes are still scaled over all their readable slices).
    An unreadable scan raises ValueError, or with an ``errors`` list is left out and listed
    there (``file``, ``reason``). For prediction on the raw layout as for preparing."""
    scans = list_scans(Path(root))
    scans.pop("__unparsed__", None)
    wanted = set(scans) if ids is None else set(ids)
    by_volume: dict[str, list[str]] = defaultdict(list)
    for scan_id in sorted(scans):
        by_volume[scans[scan_id]["case_day"]].append(scan_id)
    out = {}
    for volume_ids in by_volume.values():
        if not wanted.intersection(volume_ids):
            continue
        raw = {}
        for i in volume_ids:
            try:
                raw[i] = read_scan(scans[i]["path"], (scans[i]["height"], scans[i]["width"]))
            except ValueError as error:
                if errors is None:
                    raise
                errors.append({"file": str(scans[i]["path"]), "reason": str(error)})
        if not raw:
            continue
        for scan_id, image in zip(raw, scale_volume(list(raw.values())), strict=True):
            if scan_id in wanted:
                out[scan_id] = {**scans[scan_id], "image": image}
    return out


def read_labels(csv_path: Path) -> dict[str, dict[str, str]]:
    """train.csv as {id: {class: rle}}; an unknown class or a repeated (id, class) is an error."""
    if not csv_path.is_file():
        raise UWMGILayoutError(f"{csv_path} not found (expected id,class,segmentation)")
    labels: dict[str, dict[str, str]] = defaultdict(dict)
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise UWMGILayoutError(
                f"{csv_path}: expected columns {list(CSV_COLUMNS)}, found {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            if row["class"] not in UWMGI.foreground:
                raise UWMGILayoutError(
                    f"{csv_path}:{line}: class {row['class']!r}, expected one of "
                    f"{list(UWMGI.foreground)}"
                )
            if ID_PATTERN.match(row["id"]) is None:
                raise UWMGILayoutError(
                    f"{csv_path}:{line}: id {row['id']!r} is not case<N>_day<D>_slice_<SSSS>"
                )
            if row["class"] in labels[row["id"]]:
                raise UWMGILayoutError(f"{csv_path}:{line}: {row['id']} {row['class']} repeated")
            labels[row["id"]][row["class"]] = (row["segmentation"] or "").strip()
    return dict(labels)


class UWMGIReader:
    """The UW-Madison GI layout as a ``src.data.prepared.Reader`` (conf/data/uwmgi.yaml)."""

    name = "uwmgi"
    version = READER_VERSION
    class_set = UWMGI
    columns = ("case_day", "slice", "organs", "uwmgi_id")
    in_channels = 1  # grey slices; 2.5D stacks neighbours later (src.data.context)

    def prepare(self, raw_dir: Path, out_dir: Path, *, overwrite: bool = False) -> dict[str, Any]:
        raw_dir = Path(raw_dir)
        labels = read_labels(raw_dir / CSV_NAME)

        def convert(staging: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            scans = list_scans(raw_dir)
            skipped = [
                {"file": p, "reason": "name is not slice_<SSSS>_<W>_<H>_<pw>_<ph>.png"}
                for p in scans.pop("__unparsed__", {"paths": []})["paths"]
            ]
            skipped += [
                {"file": f"{CSV_NAME}: {i}", "reason": "listed in the CSV, no scan file"}
                for i in sorted(set(labels) - set(scans))
            ]
            listed = sorted(set(labels) & set(scans))
            if not listed:
                raise UWMGILayoutError(
                    f"{raw_dir}: no scan of {CSV_NAME} found under train/case*/case*_day*/scans/"
                )
            volumes = read_volumes(raw_dir, listed, errors=skipped)
            rows = []
            for scan_id in listed:
                if scan_id not in volumes:
                    continue
                row = self._convert_one(volumes[scan_id], labels[scan_id], scan_id, staging)
                if isinstance(row, str):
                    skipped.append({"file": f"{CSV_NAME}: {scan_id}", "reason": row})
                else:
                    rows.append(row)
            for item in skipped:
                log.warning("skipped %s: %s", item["file"], item["reason"])
            present = Counter(
                name for r in rows for name in r["organs"].split("+") if name != "none"
            )
            report = {
                "raw_dir": str(raw_dir),
                "reader": self.name,
                "slices": len(rows),
                "case_days": len({r["case_day"] for r in rows}),
                "cases": len({r["subject"] for r in rows}),
                "non_empty_per_class": {n: present.get(n, 0) for n in UWMGI.foreground},
                "empty_slices": sum(r["organs"] == "none" for r in rows),
                "slices_with_overlap": sum(r.pop("_overlap") for r in rows),
                "per_organs": dict(sorted(Counter(r["organs"] for r in rows).items())),
                "intensity_scaling": f"per case-day percentiles {list(VOLUME_PERCENTILES)}",
                "scans_without_labels_not_prepared": len(set(scans) - set(labels)),
                "skipped": skipped,
            }
            return rows, report

        report = write_prepared(raw_dir, out_dir, self, convert, overwrite=overwrite)
        log.info(
            "prepared %d UW-Madison GI slices (%d case-days) into %s; %d skipped",
            report["slices"],
            report["case_days"],
            out_dir,
            len(report["skipped"]),
        )
        return report

    @staticmethod
    def _convert_one(
        scan: dict[str, Any], rles: dict[str, str], scan_id: str, staging: Path
    ) -> dict[str, Any] | str:
        """The index row of one slice, its image and bitmask written; a reason if skipped."""
        shape = scan["image"].shape
        channels = []
        for name in UWMGI.foreground:
            try:
                channels.append(rle_decode(rles.get(name, ""), shape))
            except ValueError as error:
                return f"{name}: {error}"
        channels = np.stack(channels)
        present = [name for name, c in zip(UWMGI.foreground, channels, strict=True) if c.any()]
        relative = f"{scan['case']}/{scan['case_day']}/slice_{scan['slice']:04d}.png"
        row = {
            "image": f"images/{relative}",
            "mask": f"masks/{relative}",
            "subject": scan["case"],
            # The common column is one spacing; the record's pixels are square (pw == ph).
            "pixel_size_mm": scan["pixel_width_mm"],
            "orig_width": shape[1],
            "orig_height": shape[0],
            "case_day": scan["case_day"],
            "slice": scan["slice"],
            "organs": "+".join(present) or "none",
            "uwmgi_id": scan_id,
            "_overlap": bool((channels.sum(axis=0) > 1).any()),
        }
        for folder in ("image", "mask"):
            (staging / row[folder]).parent.mkdir(parents=True, exist_ok=True)
        write_png(staging / row["image"], scan["image"])
        write_png(staging / row["mask"], to_bitmask(channels))
        return row
