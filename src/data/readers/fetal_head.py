"""Reader of the Zenodo 8265464 fetal head record ("raw layout") into a prepared dir
(``src.data.prepared``'s format, with the extra index column ``plane``).

This is the one module that knows the raw layout: plane zips (nested zips included) or their
extracted folders, RGB ``SegmentationClass`` masks with per-folder palettes, Pascal VOC
exports, pixel-size CSVs and the file-name conventions for subjects. Everything downstream
reads only the prepared dir::

    OUT/images/<plane>/<stem>.png   8-bit grayscale
    OUT/masks/<plane>/<stem>.png    uint8 labels (src.data.classes.FETAL_HEAD)
    OUT/index.csv                   image,mask,subject,pixel_size_mm,orig_width,orig_height,plane
    OUT/prepare_report.json         counts, skipped and ignored files, unmapped pixels, resizes
    OUT/source.json                 reader version and RAW's file listing when it was read
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import logging
import re
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from src.data.cache import resize_mask
from src.data.classes import FETAL_HEAD, RGB
from src.data.images import IMAGE_SUFFIXES
from src.data.prepared import write_png, write_prepared
from src.data.readers.hc18 import hc18_subject

log = logging.getLogger(__name__)

# Bump when the same raw record would be prepared differently (subjects, labels, files):
# prepared copies of another version are then prepared again.
# 2: index.csv in the shared prepared format (plane after the common columns).
READER_VERSION = 2

# Colours of the raw record's masks -> label id. CSP is green in the three Trans-* planes
# but yellow in the diverse folder; the Pascal VOC export uses the VOC palette.
PALETTES: dict[str, dict[RGB, int]] = {
    "trans": {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2, (0, 0, 255): 3},
    "diverse": {(0, 0, 0): 0, (255, 0, 0): 1, (255, 255, 0): 2, (0, 0, 255): 3},
    "voc": {(0, 0, 0): 0, (128, 0, 0): 1, (0, 128, 0): 2, (128, 128, 0): 3},
}

PLANES = ("Trans-thalamic", "Trans-ventricular", "Trans-cerebellum", "Diverse")

# Below half the smallest distance between two colours of any palette (VOC: 128), so a colour
# is never within tolerance of two palette colours.
DEFAULT_COLOUR_TOLERANCE = 48.0
# Masks whose aspect ratio differs from the image's by less than this (relative) are resized;
# rounding one side of a 959x661 image to whole pixels changes the ratio by well under 1%.
ASPECT_TOLERANCE = 0.01

_PLANE_KEYWORDS = {
    "thalamic": "Trans-thalamic",
    "ventricular": "Trans-ventricular",
    "cerebellum": "Trans-cerebellum",
    "diverse": "Diverse",
}
# difflib ratio: accepts "thalmic", "cerebelum", "cerebellar", "ventriclar", "diversed".
_PLANE_MATCH_CUTOFF = 0.75
# "orginal-image", "original-size", "Orginal_Size": the original-resolution copies.
_ORIGINAL_SIZE_COPY = re.compile(r"or[ig]{1,3}n+al[\W_]*(?:images?|size)", re.IGNORECASE)
_PATIENT_NAME = re.compile(r"patient(\d+)", re.IGNORECASE)

IGNORED_ORIGINAL = "original-size copy (not the 959x661 data)"
IGNORED_OUTSIDE = "outside any plane folder"
IGNORED_HIDDEN = "hidden or macOS metadata file"
IGNORED_UNKNOWN = "unrecognised file type"


class DatasetLayoutError(ValueError):
    """RAW does not look like the fetal head record."""


@dataclass(frozen=True)
class _Entry:
    """One file of RAW; archives are walked as folders (their names keep the .zip)."""

    parts: tuple[str, ...]
    read: Callable[[], bytes]

    @property
    def path(self) -> str:
        return "/".join(self.parts)

    @property
    def stem(self) -> str:
        return PurePosixPath(self.parts[-1]).stem


@dataclass(frozen=True)
class _Role:
    kind: str  # image | mask_rgb | mask_voc | labelmap | pixel_csv | archive | ignored
    plane: str | None = None
    reason: str | None = None  # why ignored
    where: str | None = None  # the ignored folder or archive, for the report


def _ignored(parts: tuple[str, ...], reason: str, depth: int | None = None) -> _Role:
    """Ignore a file; report it under its first ``depth`` parts (default: its folder, or the
    archive itself, as unopened archives are one file)."""
    if depth is None:
        depth = len(parts) if parts[-1].lower().endswith(".zip") else len(parts) - 1
    return _Role("ignored", reason=reason, where="/".join(parts[:depth]) or ".")


@dataclass
class _Report:
    """Accumulates everything the run must tell the user; serialised as prepare_report.json."""

    skipped: list[dict[str, str]] = field(default_factory=list)
    ignored: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    unmapped_pixels: dict[str, int] = field(default_factory=dict)
    resized_masks: list[dict[str, Any]] = field(default_factory=list)
    names_without_subject: list[str] = field(default_factory=list)
    labelmaps_used: list[str] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        log.warning("skipped %s: %s", path, reason)
        self.skipped.append({"file": path, "reason": reason})

    def ignore(self, role: _Role) -> None:
        self.ignored[role.reason][role.where] += 1


# ---------------------------------------------------------------------------- names


def _words(name: str) -> list[str]:
    """Lower-case words of a file or folder name; CamelCase and separators both split."""
    return re.findall(r"[a-z]+|\d+", re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower())


@functools.cache
def plane_of_name(name: str) -> str | None:
    """The plane a folder/zip/file name refers to, tolerant of case and misspellings."""
    words = _words(name)
    # The diverse folder's exports are named after its test split: Test-Dataset-Segmentation.
    if any(a == "test" and b == "dataset" for a, b in zip(words, words[1:], strict=False)):
        return "Diverse"
    for word in words:
        # "TransThalamic" splits, "transthalamic" does not.
        word = word.removeprefix("trans") if len(word) > len("trans") + 3 else word
        match = difflib.get_close_matches(word, _PLANE_KEYWORDS, n=1, cutoff=_PLANE_MATCH_CUTOFF)
        if match:
            return _PLANE_KEYWORDS[match[0]]
    return None


def subject_of_stem(stem: str) -> str | None:
    """``PatientNNNNN`` for Trans-* names, the three-digit leading number for HC18 names
    (``010_2HC`` -> ``010``); normalised in case and leading zeros, so that ``patient65`` and
    ``Patient00065`` are one subject and cannot end up on both sides of a split."""
    if match := _PATIENT_NAME.match(stem):
        return f"Patient{int(match.group(1)):05d}"
    return hc18_subject(stem)


def _annotation_format(parts: tuple[str, ...]) -> str | None:
    """Name of an annotation export we recognise but do not use (their PNGs are no images)."""
    lowered = [p.lower() for p in parts]
    name = lowered[-1]
    if any("city" in p or "gtfine" in p for p in lowered):
        return "Cityscapes"
    if any("yolo" in p or p == "obj_train_data" for p in lowered) or name in (
        "obj.names",
        "obj.data",
    ):
        return "YOLO"
    voc_extras = ("imagesets", "segmentationobject", "jpegimages")
    if name.endswith(".xml") or any(p in voc_extras for p in lowered):
        return "Pascal VOC (SegmentationObject, ImageSets, XML)"
    if any("coco" in p or p == "annotations" for p in lowered) or name.endswith(".json"):
        return "COCO"
    return None


@functools.cache
def _classify(parts: tuple[str, ...]) -> _Role:
    name = parts[-1]
    if any(p.startswith("__MACOSX") for p in parts) or name.startswith("."):
        return _ignored(parts, IGNORED_HIDDEN)
    copy = next((i for i, p in enumerate(parts) if _ORIGINAL_SIZE_COPY.search(p)), None)
    if copy is not None:
        return _ignored(parts, IGNORED_ORIGINAL, depth=copy + 1)
    plane = next((p for p in map(plane_of_name, parts) if p is not None), None)
    suffix = PurePosixPath(name).suffix.lower()
    if plane is None:
        # A zip named after no plane may be Zenodo's bulk download holding the plane zips.
        return _Role("archive") if suffix == ".zip" else _ignored(parts, IGNORED_OUTSIDE)
    if fmt := _annotation_format(parts):
        return _ignored(parts, f"{fmt} annotation export (not used)")
    if name.lower() == "labelmap.txt":  # the colours of the Pascal VOC export it lies in
        return _Role("labelmap", plane)
    if suffix == ".zip":
        return _Role("archive", plane)
    if suffix == ".csv" and {"pixel", "size"} <= set(_words(name)):
        return _Role("pixel_csv", plane)
    if suffix not in IMAGE_SUFFIXES:
        return _ignored(parts, IGNORED_UNKNOWN)
    if any(p.lower() == "segmentationclass" for p in parts):
        is_voc = any({"pascal", "voc"} & set(_words(p)) for p in parts)
        return _Role("mask_voc" if is_voc else "mask_rgb", plane)
    return _Role("image", plane)


# ---------------------------------------------------------------------------- walking RAW


def _open_zip(source: Path | io.BytesIO, name: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile as error:
        raise DatasetLayoutError(
            f"{name}: not a readable zip ({error}); download it again"
        ) from None


def _walk_zip(archive: zipfile.ZipFile, prefix: tuple[str, ...]) -> Iterator[_Entry]:
    for info in archive.infolist():
        if info.is_dir():
            continue
        parts = prefix + tuple(p for p in info.filename.replace("\\", "/").split("/") if p)
        entry = _Entry(parts, functools.partial(archive.read, info))
        if _classify(parts).kind == "archive":
            # Nested zips are small enough to open in memory (the record's biggest is ~100 MB).
            yield from _walk_zip(_open_zip(io.BytesIO(entry.read()), entry.path), parts)
        else:
            yield entry


def _walk(raw_dir: Path, stack: ExitStack) -> Iterator[_Entry]:
    """Every file under RAW, descending into (nested) zips unless they are to be ignored."""
    for path in sorted(p for p in raw_dir.rglob("*") if p.is_file()):
        parts = path.relative_to(raw_dir).parts
        if _classify(parts).kind == "archive":
            yield from _walk_zip(stack.enter_context(_open_zip(path, str(path))), parts)
        else:
            yield _Entry(parts, path.read_bytes)


# ---------------------------------------------------------------------------- decoding


def read_pixel_sizes(data: bytes, source: str) -> dict[str, float]:
    """Pixel size (mm) per image stem from a ``Label,Pixel in mm`` CSV (any spacing)."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    header = [" ".join(cell.split()).lower() for cell in rows[0]] if rows else []
    if header[:2] != ["label", "pixel in mm"]:
        raise ValueError(f"{source}: expected header 'Label,Pixel in mm', found {rows[:1]}")
    sizes = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            sizes[PurePosixPath(row[0].strip()).stem] = float(row[1])
        except (IndexError, ValueError):
            raise ValueError(f"{source}:{line}: expected 'name,millimetres', found {row}") from None
    return sizes


def read_labelmap(data: bytes, source: str) -> dict[RGB, int]:
    """Colour -> label of a CVAT Pascal VOC ``labelmap.txt`` (``name:r,g,b:parts:actions``
    lines under a ``#`` header), its class names matched to FETAL_HEAD in any case."""
    palette: dict[RGB, int] = {}
    for number, line in enumerate(data.decode("utf-8-sig").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        channels = rest.split(":", 1)[0].split(",")
        if len(channels) != 3 or not all(c.strip().isdigit() and int(c) < 256 for c in channels):
            raise DatasetLayoutError(f"{source}:{number}: expected 'name:r,g,b::', found {line!r}")
        try:
            label = FETAL_HEAD.label(name.strip())
        except KeyError:
            raise DatasetLayoutError(
                f"{source}:{number}: unknown class {name.strip()!r}; this project knows "
                f"{list(FETAL_HEAD.names)} (in any case)"
            ) from None
        colour = tuple(int(c) for c in channels)
        if palette.get(colour, label) != label:
            raise DatasetLayoutError(f"{source}:{number}: colour {colour} names two classes")
        palette[colour] = label
    if not palette:
        raise DatasetLayoutError(f"{source}: lists no class")
    return palette


def map_colours(
    rgb: np.ndarray, palette: dict[RGB, int], tolerance: float
) -> tuple[np.ndarray, int]:
    """Labels of an RGB mask by nearest palette colour; farther than ``tolerance`` -> 0.

    Returns the labels and the number of pixels that could not be mapped (left background).
    """
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    labels = np.zeros(codes.shape, np.uint8)
    exact = np.zeros(codes.shape, bool)
    # Exact colours first: a clean mask needs four comparisons, not a sort of every pixel.
    for (r, g, b), label in palette.items():
        hit = codes == (r << 16 | g << 8 | b)
        labels[hit] = label
        exact |= hit
    if exact.all():
        return labels, 0
    odd_codes, inverse = np.unique(codes[~exact], return_inverse=True)
    odd_rgb = np.stack([odd_codes >> 16, (odd_codes >> 8) & 255, odd_codes & 255], axis=1)
    palette_rgb = np.array(list(palette), np.float64)
    distance = np.linalg.norm(odd_rgb[:, None, :] - palette_rgb[None], axis=2)
    within = distance.min(axis=1) <= tolerance
    odd_labels = np.where(within, np.array(list(palette.values()))[distance.argmin(axis=1)], 0)
    labels[~exact] = odd_labels[inverse]
    return labels, int((~within[inverse]).sum())


def _decode(data: bytes, flags: int) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def _same_aspect(mask_hw: tuple[int, int], image_hw: tuple[int, int]) -> bool:
    (mh, mw), (ih, iw) = mask_hw, image_hw
    return abs(mw / mh - iw / ih) <= ASPECT_TOLERANCE * iw / ih


# ---------------------------------------------------------------------------- prepare


@dataclass
class _Sources:
    """RAW's files by role; nothing decoded yet except the small pixel-size CSVs."""

    images: dict[tuple[str, str], _Entry] = field(default_factory=dict)  # (plane, stem)
    masks: dict[tuple[str, str], dict[str, _Entry]] = field(
        default_factory=lambda: defaultdict(dict)  # (plane, stem) -> mask kind -> entry
    )
    pixel_sizes: dict[tuple[str, str], float] = field(default_factory=dict)
    labelmaps: dict[tuple[str, ...], _Entry] = field(default_factory=dict)  # by export folder
    labelmap_palettes: dict[str, dict[RGB, int]] = field(default_factory=dict)  # those read


def _collect(entries: Iterator[_Entry], report: _Report) -> _Sources:
    """Sort RAW's files by role."""
    sources = _Sources()
    images, masks, pixel_sizes = sources.images, sources.masks, sources.pixel_sizes
    for entry in entries:
        role = _classify(entry.parts)
        if role.kind == "ignored":
            report.ignore(role)
            continue
        if role.kind == "labelmap":
            sources.labelmaps[entry.parts[:-1]] = entry
            continue
        if role.kind == "pixel_csv":
            try:
                sizes = read_pixel_sizes(entry.read(), entry.path)
            except (ValueError, UnicodeDecodeError) as error:
                report.skip(entry.path, f"unreadable pixel-size CSV: {error}")
                continue
            pixel_sizes.update({(role.plane, stem): size for stem, size in sizes.items()})
            continue
        key = (role.plane, entry.stem)
        slot = images if role.kind == "image" else masks[key]
        slot_key = key if role.kind == "image" else role.kind
        if slot_key in slot:
            report.skip(entry.path, f"duplicate of {slot[slot_key].path}")
        else:
            slot[slot_key] = entry
    return sources


def _not_this_dataset(raw_dir: Path, report: _Report) -> DatasetLayoutError:
    found = sorted(p.name for p in raw_dir.iterdir())
    ignored = {reason: sum(c.values()) for reason, c in report.ignored.items()}
    return DatasetLayoutError(
        f"{raw_dir} does not look like the fetal head record (Zenodo 8265464): expected zips or "
        f"folders named like {', '.join(PLANES[:3])}, 'Diverse Fetal Head Images' holding "
        f"images and SegmentationClass masks; found {found[:12]}"
        f"{' ...' if len(found) > 12 else ''} with no image in a plane folder "
        f"(files ignored: {ignored or 'none'})"
    )


def prepare_dataset(
    raw_dir: Path,
    out_dir: Path,
    *,
    overwrite: bool = False,
    colour_tolerance: float = DEFAULT_COLOUR_TOLERANCE,
) -> dict[str, Any]:
    """Read the raw record under ``raw_dir`` into the prepared dir ``out_dir``; return the report.
    (Atomic, and an existing ``out_dir`` replaced only with ``overwrite``: see write_prepared.)"""
    return FetalHeadReader(colour_tolerance).prepare(raw_dir, out_dir, overwrite=overwrite)


class FetalHeadReader:
    """The fetal head record as a ``src.data.prepared.Reader`` (chosen by conf/data)."""

    name = "fetal_head"
    version = READER_VERSION
    class_set = FETAL_HEAD
    columns = ("plane",)
    in_channels = 1

    def __init__(self, colour_tolerance: float = DEFAULT_COLOUR_TOLERANCE):
        self.colour_tolerance = colour_tolerance

    def prepare(self, raw_dir: Path, out_dir: Path, *, overwrite: bool = False) -> dict[str, Any]:
        raw_dir = Path(raw_dir)
        report = _Report()

        def convert(staging: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            with ExitStack() as stack:
                sources = _collect(_walk(raw_dir, stack), report)
                if not sources.images:
                    raise _not_this_dataset(raw_dir, report)
                rows = _convert(sources, staging, self.colour_tolerance, report)
            if not rows:
                raise DatasetLayoutError(
                    f"{raw_dir}: no image could be paired with a readable mask; "
                    f"skipped: {Counter(s['reason'].split(':')[0] for s in report.skipped)}"
                )
            return rows, _summarise(raw_dir, rows, report)

        if not raw_dir.is_dir():
            raise FileNotFoundError(
                f"raw_dir {raw_dir} is not a folder (expected the record's zips)"
            )
        summary = write_prepared(raw_dir, out_dir, self, convert, overwrite=overwrite)
        log.info(
            "prepared %d images into %s (%d skipped, %d unmapped pixels, %d masks resized)",
            summary["images"],
            out_dir,
            len(report.skipped),
            sum(report.unmapped_pixels.values()),
            len(report.resized_masks),
        )
        return summary


def _voc_palette(mask_entry: _Entry, sources: _Sources, report: _Report) -> dict[RGB, int]:
    """The colours of a Pascal VOC mask: its export's labelmap.txt, else the VOC palette.
    Each labelmap is read once, when a mask first needs it (an unused export is not read)."""
    labelmap = sources.labelmaps.get(mask_entry.parts[:-2])  # <export>/SegmentationClass/x.png
    if labelmap is None:
        return PALETTES["voc"]
    if labelmap.path not in sources.labelmap_palettes:
        sources.labelmap_palettes[labelmap.path] = read_labelmap(labelmap.read(), labelmap.path)
        report.labelmaps_used.append(labelmap.path)
    return sources.labelmap_palettes[labelmap.path]


def _convert(sources: _Sources, staging: Path, tolerance: float, report: _Report):
    """Decode each paired image and mask once, write them; return the index rows."""
    images, masks, pixel_sizes = sources.images, sources.masks, sources.pixel_sizes
    for plane in PLANES:
        (staging / "images" / plane).mkdir(parents=True)
        (staging / "masks" / plane).mkdir(parents=True)
    for key in sorted(set(masks) - set(images)):
        for source in masks[key].values():
            report.skip(source.path, "mask without image")
    rows = []
    for plane, stem in sorted(images, key=lambda k: (PLANES.index(k[0]), k[1])):
        image_entry = images[(plane, stem)]
        exports = masks.get((plane, stem), {})
        # The RGB SegmentationClass export is the reference; Pascal VOC only when it is alone.
        mask_kind = "mask_rgb" if "mask_rgb" in exports else "mask_voc"
        if mask_kind not in exports:
            report.skip(image_entry.path, "image without mask")
            continue
        mask_entry = exports[mask_kind]
        image = _decode(image_entry.read(), cv2.IMREAD_GRAYSCALE)
        if image is None:
            report.skip(image_entry.path, "unreadable image")
            continue
        bgr = _decode(mask_entry.read(), cv2.IMREAD_COLOR)
        if bgr is None:
            report.skip(mask_entry.path, "unreadable mask")
            continue
        if mask_kind == "mask_voc":
            palette = _voc_palette(mask_entry, sources, report)
        else:
            palette = PALETTES["diverse" if plane == "Diverse" else "trans"]
        labels, unmapped = map_colours(bgr[..., ::-1], palette, tolerance)
        if unmapped:
            report.unmapped_pixels[mask_entry.path] = unmapped
        if labels.shape != image.shape:
            (mh, mw), (ih, iw) = labels.shape, image.shape
            if not _same_aspect(labels.shape, image.shape):
                report.skip(
                    mask_entry.path, f"mask {mw}x{mh} has another aspect than image {iw}x{ih}"
                )
                continue
            labels = resize_mask(labels, (ih, iw))
            report.resized_masks.append({"mask": mask_entry.path, "from": [mw, mh], "to": [iw, ih]})
        subject = subject_of_stem(stem)
        if subject is None:
            report.names_without_subject.append(image_entry.path)
        row = {
            "image": f"images/{plane}/{stem}.png",
            "mask": f"masks/{plane}/{stem}.png",
            "plane": plane,
            "subject": subject or stem,
            "pixel_size_mm": pixel_sizes.get((plane, stem), ""),
            "orig_width": image.shape[1],
            "orig_height": image.shape[0],
            "mask_source": "voc" if mask_kind == "mask_voc" else "rgb",
            "class_pixels": np.bincount(labels.ravel(), minlength=FETAL_HEAD.num_classes),
        }
        write_png(staging / row["image"], image)
        write_png(staging / row["mask"], labels)
        rows.append(row)
        if len(rows) % 500 == 0:
            log.info("prepared %d of %d images", len(rows), len(images))
    return rows


def _summarise(raw_dir: Path, rows: list[dict[str, Any]], report: _Report) -> dict[str, Any]:
    per_plane = {}
    for plane in PLANES:
        plane_rows = [r for r in rows if r["plane"] == plane]
        pixels = sum((r["class_pixels"] for r in plane_rows), np.zeros(FETAL_HEAD.num_classes))
        per_plane[plane] = {
            "images": len(plane_rows),
            "subjects": len({r["subject"] for r in plane_rows}),
            "mask_sources": dict(Counter(r["mask_source"] for r in plane_rows)),
            "without_pixel_size": sum(r["pixel_size_mm"] == "" for r in plane_rows),
            "images_with_class": {
                name: sum(int(r["class_pixels"][label] > 0) for r in plane_rows)
                for label, name in enumerate(FETAL_HEAD.names)
            },
            "class_pixels": {
                name: int(pixels[label]) for label, name in enumerate(FETAL_HEAD.names)
            },
        }
    return {
        "raw_dir": str(raw_dir),
        "images": len(rows),
        "subjects": len({r["subject"] for r in rows}),
        "planes_missing": [p for p in PLANES if not per_plane[p]["images"]],
        "per_plane": per_plane,
        "skipped": report.skipped,
        "ignored": {
            reason: {"files": sum(folders.values()), "folders": sorted(folders)}
            for reason, folders in sorted(report.ignored.items())
        },
        "unmapped_pixels": {
            "total": sum(report.unmapped_pixels.values()),
            "per_mask": report.unmapped_pixels,
        },
        "resized_masks": report.resized_masks,
        "names_without_subject": report.names_without_subject,
        "voc_labelmaps": sorted(report.labelmaps_used),
    }
