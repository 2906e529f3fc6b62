"""A synthetic fetal head record in the raw Zenodo layout, with the truth that generated it.

The real record cannot be shipped with the tests, so this writes one with every quirk the
reader (``src.data.readers.fetal_head``) must survive: plane zips, a nested mask zip, an extracted
plane folder, a plane whose only masks are a Pascal VOC export, yellow CSP in the diverse
folder, HC18 names, both pixel-size CSV headers, original-size copies and unused annotation
exports (Cityscapes, YOLO, COCO, SegmentationObject). The truth lies beside it in
``phantom_truth/`` (``labels/<stem>.png`` and ``heads.csv``), which the reader ignores.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from src.data.classes import FETAL_HEAD
from src.data.readers.fetal_head import PALETTES, PLANES
from src.synthetic.phantom import render_scan

log = logging.getLogger(__name__)

TRUTH_DIR = "phantom_truth"
HEADS_COLUMNS = (
    *("stem", "plane", "subject"),
    *("cx", "cy", "semi_major", "semi_minor", "angle_deg", "pixel_size_mm"),
)
REAL_SIZE = (959, 661)
# Fixed zip timestamps: the same seed gives byte-identical archives.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CSP_RATE, _LV_RATE = 0.5, 0.4  # about the record's share of images with CSP / LV
_DECOY_IMAGES = 2  # images given the unused annotation exports; a few show they are ignored
_RECORD_CLASS_NAMES = ("background", "Brain", "CSP", "LV")  # by label, as its labelmaps say


@dataclass(frozen=True)
class _PlaneLayout:
    """Where one plane's files go; paths inside ``container`` (a zip, or "." for RAW itself)."""

    plane: str
    container: str
    image_dir: str
    mask_dir: str
    palette: str
    mask_zip: str | None = None
    pixel_csv: str | None = None
    csv_header: str = "Label,Pixel in mm"
    plane_number: int = 0  # K of PatientNNNNN_PlaneK_i_of_n; 0: HC18 names
    voc_copy_dir: str | None = None  # a Pascal VOC export beside the RGB masks
    original_copy: tuple[str, str, tuple[int, int]] | None = None  # container, dir, real size
    decoy_prefix: str | None = None  # Cityscapes/YOLO/COCO/SegmentationObject exports


_LAYOUTS = (
    _PlaneLayout(
        "Trans-thalamic",
        "Trans-thalamic.zip",
        image_dir="Trans-thalamic/Trans-thalamic",
        mask_dir="Trans-thalamic-Segmentation/SegmentationClass",
        palette="trans",
        pixel_csv="Trans-thalamic/Trans-Thalamic-Pixel-Size.csv",
        plane_number=1,
        voc_copy_dir="Trans-thalamic-PASCAL",
        original_copy=("Trans-thalamic-orginal-size", "", (692, 480)),
        decoy_prefix="Trans-thalamic",
    ),
    _PlaneLayout(
        "Trans-ventricular",
        "Trans-ventricular.zip",
        image_dir="Trans-ventricular/Trans-ventricular",
        mask_dir="SegmentationClass",
        mask_zip="Trans-ventricular/Trans-ventricular-segmentation-mask.zip",
        palette="trans",
        pixel_csv="Trans-ventricular/Trans-ventricular-Pixel-Size.csv",
        csv_header="Label,Pixel  in mm",
        plane_number=2,
    ),
    _PlaneLayout(  # extracted, and masked only by its Pascal VOC export
        "Trans-cerebellum",
        ".",
        image_dir="Trans-cerebellum/Trans-cerebellum",
        mask_dir="Trans-cerebellum-PASCAL/SegmentationClass",
        palette="voc",
        pixel_csv="Trans-cerebellum/Trans-cerebellum-Pixel-Size.csv",
        plane_number=3,
    ),
    _PlaneLayout(
        "Diverse",
        "Diverse Fetal Head Images.zip",
        image_dir="Diverse Fetal Head Images/Orginal_train_images_to_959_661",
        mask_dir="Diverse Fetal Head Images/Test-Dataset-Segmentation/SegmentationClass",
        palette="diverse",
        original_copy=(
            "Diverse Fetal Head Images-orginal-image.zip",
            "Diverse Fetal Head Images",
            (800, 540),
        ),
    ),
)
assert tuple(layout.plane for layout in _LAYOUTS) == PLANES
_TRANS_LAYOUTS = _LAYOUTS[:3]


@dataclass(frozen=True)
class _PlannedScan:
    layout: _PlaneLayout
    stem: str
    subject: str
    has_csp: bool
    has_lv: bool
    pixel_size_mm: float


class _Sinks:
    """Files of RAW by container: zips written deterministically, "." and folders on disk."""

    def __init__(self, root: Path):
        self.root = root
        # container -> (open zip, its in-memory buffer when nested in another container)
        self._zips: dict[str, tuple[zipfile.ZipFile, io.BytesIO | None]] = {}

    def write(self, container: str, path: str, data: bytes) -> None:
        if not container.endswith(".zip"):
            target = self.root / container / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            return
        if container not in self._zips:
            # "outer.zip/inner.zip": the inner zip is built in memory and stored in the outer.
            buffer = io.BytesIO() if "/" in container else None
            target = buffer or self.root / container
            self._zips[container] = (zipfile.ZipFile(target, "w", zipfile.ZIP_STORED), buffer)
        info = zipfile.ZipInfo(path, date_time=_ZIP_EPOCH)
        info.external_attr = 0o644 << 16
        self._zips[container][0].writestr(info, data)

    def close(self) -> None:
        """Close the deepest zip first: a nested one is then stored in its still open outer."""
        while self._zips:
            container = max(self._zips, key=lambda c: c.count("/"))
            archive, buffer = self._zips.pop(container)
            archive.close()
            if buffer is not None:
                outer, inner_path = container.split("/", 1)
                self.write(outer, inner_path, buffer.getvalue())


def _png(array: np.ndarray) -> bytes:
    """PNG bytes of a grayscale (H, W) or BGR (H, W, 3) array (OpenCV's channel order)."""
    return cv2.imencode(".png", array)[1].tobytes()


def _mask_png(labels: np.ndarray, palette: str) -> bytes:
    """The mask as its folder paints it: RGB, or palette-indexed PNG for Pascal VOC."""
    colour_of_label = np.zeros((FETAL_HEAD.num_classes, 3), np.uint8)
    for colour, label in PALETTES[palette].items():
        colour_of_label[label] = colour
    if palette != "voc":
        return _png(np.take(colour_of_label[:, ::-1], labels, axis=0))
    indexed = Image.fromarray(labels)
    indexed.putpalette(colour_of_label.ravel().tolist())
    buffer = io.BytesIO()
    indexed.save(buffer, format="PNG")
    return buffer.getvalue()


def _labelmap() -> bytes:
    """CVAT's labelmap.txt of a Pascal VOC export, class names spelled as in the record."""
    lines = ["# label:color_rgb:parts:actions"]
    for colour, label in PALETTES["voc"].items():
        lines.append(f"{_RECORD_CLASS_NAMES[label]}:{','.join(map(str, colour))}::")
    return ("\n".join(lines) + "\n").encode()


def _plan(rng: np.random.Generator, n_subjects: int, pixel_scale: float) -> list[_PlannedScan]:
    """Subjects -> scans. A quarter are HC18 subjects; patients span one to three planes."""
    planned: list[tuple[_PlaneLayout, str, str]] = []
    for index in range(n_subjects):
        if index % 4 == 3:
            number = f"{index // 4 + 1:03d}"
            # The first HC18 subject has two scans so every record shows NNN_HC + NNN_2HC.
            count = 2 if index == 3 else int(rng.integers(1, 3))
            stems = [f"{number}_HC"] + [f"{number}_{k}HC" for k in range(2, count + 1)]
            planned += [(_LAYOUTS[3], stem, number) for stem in stems]
            continue
        subject = f"Patient{index + 1:05d}"
        # Plane index % 3 always, so small records cover every plane; the first patient all.
        extra = rng.random(len(_TRANS_LAYOUTS)) < (1.0 if index == 0 else 0.4)
        for k, layout in enumerate(_TRANS_LAYOUTS):
            if k == index % 3 or extra[k]:
                n = int(rng.integers(1, 3))
                for i in range(1, n + 1):
                    stem = f"{subject}_Plane{layout.plane_number}_{i}_of_{n}"
                    planned.append((layout, stem, subject))
    scans, seen_layouts = [], set()
    for layout, stem, subject in planned:
        # Each folder's first scan has CSP and LV, so every palette route carries every class.
        first = layout.plane not in seen_layouts
        seen_layouts.add(layout.plane)
        scans.append(
            _PlannedScan(
                layout,
                stem,
                subject,
                has_csp=first or bool(rng.random() < _CSP_RATE),
                has_lv=first or bool(rng.random() < _LV_RATE),
                pixel_size_mm=round(float(rng.uniform(0.07, 0.33)) * pixel_scale, 9),
            )
        )
    return scans


def _write_decoys(sinks: _Sinks, layout: _PlaneLayout, labels_of: dict[str, np.ndarray]) -> None:
    """Unused annotation exports of a few images, laid out as CVAT writes them (simplified)."""
    container, prefix = layout.container, layout.decoy_prefix
    cityscapes = f"{container}/{prefix}/{prefix}-CityScapes.zip"
    names = "".join(f"{name}\n" for name in FETAL_HEAD.foreground)
    sinks.write(container, f"{prefix}-YOLO/obj.names", names.encode())
    coco = {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": i, "name": n} for i, n in enumerate(FETAL_HEAD.foreground, 1)]
    for image_id, (stem, labels) in enumerate(labels_of.items(), start=1):
        sinks.write(cityscapes, f"gtFine/default/{stem}_gtFine_labelIds.png", _png(labels))
        colour_png = _mask_png(labels, "trans")
        sinks.write(cityscapes, f"gtFine/default/{stem}_gtFine_color.png", colour_png)
        voc_object = f"{layout.voc_copy_dir}/SegmentationObject/{stem}.png"
        sinks.write(container, voc_object, _mask_png(labels, "voc"))
        height, width = labels.shape
        coco["images"].append({"id": image_id, "file_name": f"{stem}.png"})
        yolo = []
        for label in range(1, FETAL_HEAD.num_classes):
            ys, xs = np.nonzero(labels == label)
            if not len(xs):
                continue
            x, y, w, h = (int(v) for v in (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1))
            box = {"image_id": image_id, "category_id": label, "bbox": [x, y, w, h]}
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, **box})
            centre = ((x + w / 2) / width, (y + h / 2) / height)
            yolo.append(
                f"{label - 1} {centre[0]:.6f} {centre[1]:.6f} {w / width:.6f} {h / height:.6f}"
            )
        yolo_txt = "".join(line + "\n" for line in yolo).encode()
        sinks.write(container, f"{prefix}-YOLO/obj_train_data/{stem}.txt", yolo_txt)
    coco_json = json.dumps(coco, indent=1).encode()
    sinks.write(container, f"{prefix}-COCO/annotations/instances_default.json", coco_json)


def _render_files(
    planned: _PlannedScan, seed: np.random.SeedSequence, size: tuple[int, int]
) -> tuple[list[tuple[str, str, bytes]], dict[str, float], np.ndarray]:
    """Render one scan and encode every file made from it: (container, path, bytes) triples,
    the head ellipse and the labels. Pure, so scans can be rendered in worker processes."""
    layout, stem, (width, height) = planned.layout, planned.stem, size
    scan = render_scan(
        np.random.default_rng(seed),
        width,
        height,
        has_csp=planned.has_csp,
        has_lv=planned.has_lv,
        pixel_size_mm=planned.pixel_size_mm,
    )
    mask_container = (
        f"{layout.container}/{layout.mask_zip}" if layout.mask_zip else layout.container
    )
    files = [
        (layout.container, f"{layout.image_dir}/{stem}.png", _png(scan.image)),
        (mask_container, f"{layout.mask_dir}/{stem}.png", _mask_png(scan.labels, layout.palette)),
        (".", f"{TRUTH_DIR}/labels/{stem}.png", _png(scan.labels)),
    ]
    if layout.voc_copy_dir:
        voc_mask = f"{layout.voc_copy_dir}/SegmentationClass/{stem}.png"
        files.append((layout.container, voc_mask, _mask_png(scan.labels, "voc")))
    if layout.original_copy:
        container, folder, (real_w, real_h) = layout.original_copy
        scaled = (round(width * real_w / REAL_SIZE[0]), round(height * real_h / REAL_SIZE[1]))
        original = cv2.resize(scan.image, scaled, interpolation=cv2.INTER_AREA)
        files.append((container, f"{folder}/{stem}.png".lstrip("/"), _png(original)))
    return files, scan.head.as_dict(), scan.labels


def write_phantom_record(
    out_dir: Path,
    *,
    n_subjects: int,
    size: tuple[int, int] = REAL_SIZE,
    seed: int = 0,
    workers: int | None = 1,
) -> Path:
    """Write a phantom record of ``n_subjects`` subjects at ``size`` (width, height) into
    ``out_dir`` (which must be missing or empty); deterministic for a given ``seed`` whatever
    the number of ``workers`` (processes rendering scans; None: one per CPU core)."""
    out_dir = Path(out_dir)
    width, height = (int(v) for v in size)
    if n_subjects < 1 or width < 16 or height < 16:
        raise ValueError(f"need n_subjects >= 1 and size >= 16x16, got {n_subjects}, {size}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; choose a new out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    # One seed per scan: a scan's pixels depend on the seed and its position only.
    root_seed = np.random.SeedSequence(seed)
    plan_rng = np.random.default_rng(root_seed.spawn(1)[0])
    # Pixel sizes scale with the image so that heads keep their real size in millimetres.
    scans = _plan(plan_rng, n_subjects, pixel_scale=REAL_SIZE[0] / width)
    scan_seeds = root_seed.spawn(len(scans))
    sinks = _Sinks(out_dir)
    heads, pixel_rows = [], {layout.plane: [] for layout in _LAYOUTS}
    decoy_labels = {layout.plane: {} for layout in _LAYOUTS if layout.decoy_prefix}
    with ExitStack() as stack:
        pool_map = map
        if workers != 1:
            pool_map = stack.enter_context(ProcessPoolExecutor(workers)).map
        rendered = pool_map(_render_files, scans, scan_seeds, [(width, height)] * len(scans))
        for planned, (files, head, labels) in zip(scans, rendered, strict=True):
            layout = planned.layout
            for container, path, data in files:
                sinks.write(container, path, data)
            if layout.decoy_prefix and len(decoy_labels[layout.plane]) < _DECOY_IMAGES:
                decoy_labels[layout.plane][planned.stem] = labels
            heads.append({"stem": planned.stem, "plane": layout.plane, "subject": planned.subject})
            heads[-1].update(head)
            pixel_rows[layout.plane].append(f"{planned.stem}.png,{planned.pixel_size_mm}")
    for layout in _LAYOUTS:
        if layout.pixel_csv:
            text = "\n".join([layout.csv_header, *pixel_rows[layout.plane]]) + "\n"
            sinks.write(layout.container, layout.pixel_csv, text.encode())
        if layout.palette == "voc" or layout.voc_copy_dir:
            voc_dir = layout.voc_copy_dir or layout.mask_dir.rsplit("/", 1)[0]
            sinks.write(layout.container, f"{voc_dir}/labelmap.txt", _labelmap())
        if layout.decoy_prefix:
            _write_decoys(sinks, layout, decoy_labels[layout.plane])
    sinks.close()
    with (out_dir / TRUTH_DIR / "heads.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADS_COLUMNS)
        writer.writeheader()
        writer.writerows(heads)
    per_plane = Counter(row["plane"] for row in heads)
    log.info(
        "wrote a phantom record of %d images (%s) from %d subjects at %dx%d to %s",
        len(heads),
        ", ".join(f"{plane} {per_plane[plane]}" for plane in PLANES),
        n_subjects,
        width,
        height,
        out_dir,
    )
    return out_dir
