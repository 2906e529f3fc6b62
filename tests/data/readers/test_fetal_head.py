"""prepare_dataset against the phantom's generating truth and against hand-made bad input."""

import csv
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src.data.prepared import INDEX_COLUMNS, SOURCE_FILE
from src.data.prepared import why_outdated as why_outdated_for
from src.data.readers import fetal_head
from src.data.readers.fetal_head import (
    PALETTES,
    PLANES,
    READER_VERSION,
    DatasetLayoutError,
    FetalHeadReader,
    map_colours,
    plane_of_name,
    prepare_dataset,
    read_labelmap,
    read_pixel_sizes,
    subject_of_stem,
)

REPO = Path(__file__).resolve().parents[3]
RED, GREEN, BLUE, YELLOW, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 0, 0)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def truth_by_stem(phantom_raw: Path) -> dict[str, dict[str, str]]:
    return {row["stem"]: row for row in read_csv(phantom_raw / "phantom_truth" / "heads.csv")}


def index_by_stem(prepared_dir: Path) -> dict[str, dict[str, str]]:
    return {Path(row["image"]).stem: row for row in read_csv(prepared_dir / "index.csv")}


# ------------------------------------------------------------------ the phantom record


def test_prepare_reproduces_the_generating_labels_exactly(phantom_raw, prepared_dir):
    truth, index = truth_by_stem(phantom_raw), index_by_stem(prepared_dir)
    assert sorted(index) == sorted(truth)
    classes_seen = {plane: set() for plane in PLANES}
    for stem, row in index.items():
        mask = read_png(prepared_dir / row["mask"])
        expected = read_png(phantom_raw / "phantom_truth" / "labels" / f"{stem}.png")
        assert mask.dtype == np.uint8 and mask.ndim == 2
        np.testing.assert_array_equal(mask, expected, err_msg=stem)
        image = read_png(prepared_dir / row["image"])
        assert image.dtype == np.uint8 and image.shape == expected.shape
        assert (int(row["orig_width"]), int(row["orig_height"])) == (96, 66)
        assert row["plane"] == truth[stem]["plane"]
        assert row["image"] == f"images/{row['plane']}/{stem}.png"
        assert row["mask"] == f"masks/{row['plane']}/{stem}.png"
        classes_seen[row["plane"]] |= set(np.unique(mask).tolist())
    # Every route (green CSP, yellow CSP, nested zip, VOC-only extracted folder) carried
    # every class, so the equality above covered all of them.
    assert classes_seen == {plane: {0, 1, 2, 3} for plane in PLANES}


def test_prepared_images_are_the_raw_pixels(phantom_raw, prepared_dir):
    index = index_by_stem(prepared_dir)
    with zipfile.ZipFile(phantom_raw / "Trans-thalamic.zip") as archive:
        for stem in (s for s, row in index.items() if row["plane"] == "Trans-thalamic"):
            data = archive.read(f"Trans-thalamic/Trans-thalamic/{stem}.png")
            raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(read_png(prepared_dir / index[stem]["image"]), raw)
    extracted = phantom_raw / "Trans-cerebellum" / "Trans-cerebellum"
    cerebellum = [s for s, row in index.items() if row["plane"] == "Trans-cerebellum"]
    assert cerebellum
    for stem in cerebellum:
        raw = read_png(extracted / f"{stem}.png")
        np.testing.assert_array_equal(read_png(prepared_dir / index[stem]["image"]), raw)


def test_report_counts_sources_and_ignored_exports(phantom_raw, prepared_dir):
    report = json.loads((prepared_dir / "prepare_report.json").read_text())
    truth = truth_by_stem(phantom_raw)
    per_plane = {p: sum(row["plane"] == p for row in truth.values()) for p in PLANES}
    assert report["images"] == len(truth)
    assert {p: report["per_plane"][p]["images"] for p in PLANES} == per_plane
    # Trans-thalamic has both exports: the RGB one wins; Trans-cerebellum has only VOC.
    sources = {p: report["per_plane"][p]["mask_sources"] for p in PLANES}
    assert sources["Trans-cerebellum"] == {"voc": per_plane["Trans-cerebellum"]}
    for plane in ("Trans-thalamic", "Trans-ventricular", "Diverse"):
        assert sources[plane] == {"rgb": per_plane[plane]}
    for plane in PLANES:
        masks = [read_png(phantom_raw / "phantom_truth" / "labels" / f"{s}.png") for s in truth]
        masks = [m for m, row in zip(masks, truth.values(), strict=True) if row["plane"] == plane]
        with_csp = sum(bool((m == 2).any()) for m in masks)
        assert report["per_plane"][plane]["images_with_class"]["csp"] == with_csp
    assert report["skipped"] == []
    assert report["unmapped_pixels"]["total"] == 0
    assert report["resized_masks"] == []
    assert report["voc_labelmaps"] == ["Trans-cerebellum-PASCAL/labelmap.txt"]  # VOC-only plane
    ignored = report["ignored"]
    originals = ignored["original-size copy (not the 959x661 data)"]["folders"]
    assert "Trans-thalamic-orginal-size" in originals
    assert "Diverse Fetal Head Images-orginal-image.zip" in originals
    exports = {reason.split()[0] for reason in ignored if "annotation export" in reason}
    assert exports == {"Cityscapes", "YOLO", "COCO", "Pascal"}
    assert ignored["outside any plane folder"]["folders"] == [
        "phantom_truth",
        "phantom_truth/labels",
    ]


def test_subjects_group_patients_across_planes_and_hc18_numbers(phantom_raw, prepared_dir):
    truth, index = truth_by_stem(phantom_raw), index_by_stem(prepared_dir)
    assert {s: row["subject"] for s, row in index.items()} == {
        s: row["subject"] for s, row in truth.items()
    }
    planes_of = {}
    for row in index.values():
        planes_of.setdefault(row["subject"], set()).add(row["plane"])
    assert planes_of["Patient00001"] == set(PLANES[:3])
    assert index["001_HC"]["subject"] == index["001_2HC"]["subject"] == "001"


@pytest.mark.parametrize(
    ("stem", "subject"),
    [
        ("Patient00168_Plane3_3_of_3", "Patient00168"),
        ("patient00007_Plane1_1_of_2", "Patient00007"),
        ("PATIENT65_Plane2_1_of_1", "Patient00065"),
        ("patient65", "Patient00065"),
        ("Patient0000065_Plane1_2_of_2", "Patient00065"),
        ("010_HC", "010"),
        ("010_2HC", "010"),
        ("10_2hc", "010"),
        ("0010_HC", "010"),
        ("123_3HC", "123"),
        ("holiday", None),
        ("HC_010", None),
    ],
)
def test_subject_of_stem_normalises_case_and_leading_zeros(stem, subject):
    assert subject_of_stem(stem) == subject


def test_pixel_sizes_read_with_both_header_spellings(phantom_raw, prepared_dir):
    with zipfile.ZipFile(phantom_raw / "Trans-thalamic.zip") as thalamic:
        header = thalamic.read("Trans-thalamic/Trans-Thalamic-Pixel-Size.csv").splitlines()[0]
        assert header == b"Label,Pixel in mm"
    with zipfile.ZipFile(phantom_raw / "Trans-ventricular.zip") as ventricular:
        header = ventricular.read("Trans-ventricular/Trans-ventricular-Pixel-Size.csv")
        assert header.splitlines()[0] == b"Label,Pixel  in mm"
    truth, index = truth_by_stem(phantom_raw), index_by_stem(prepared_dir)
    for stem, row in index.items():
        if row["plane"] == "Diverse":
            assert row["pixel_size_mm"] == ""
        else:
            assert float(row["pixel_size_mm"]) == float(truth[stem]["pixel_size_mm"])
    planes_with_sizes = {row["plane"] for row in index.values() if row["pixel_size_mm"]}
    assert planes_with_sizes == set(PLANES[:3])


def test_read_pixel_sizes_accepts_bom_and_spacing_and_names_a_bad_file():
    data = "\ufeffLabel, Pixel  in mm\r\nPatient00168_Plane3_3_of_3.png,0.114285714\r\n\r\n"
    assert read_pixel_sizes(data.encode(), "x.csv") == {"Patient00168_Plane3_3_of_3": 0.114285714}
    with pytest.raises(ValueError, match=r"sizes\.csv: expected header 'Label,Pixel in mm'"):
        read_pixel_sizes(b"name,mm\na.png,0.1\n", "sizes.csv")
    with pytest.raises(ValueError, match=r"sizes\.csv:3: expected 'name,millimetres'"):
        read_pixel_sizes(b"Label,Pixel in mm\na.png,0.1\nb.png,n/a\n", "sizes.csv")


@pytest.mark.parametrize(
    ("name", "plane"),
    [
        ("Trans-thalamic.zip", "Trans-thalamic"),
        ("TRANS-THALAMIC", "Trans-thalamic"),
        ("Trans-Thalamic-Pixel-Size.csv", "Trans-thalamic"),
        ("Trans-thalmic-Segmentation", "Trans-thalamic"),
        ("TransThalamic", "Trans-thalamic"),
        ("transventriculer", "Trans-ventricular"),
        ("Trans_Cerebelum", "Trans-cerebellum"),
        ("Trans-cerebellar-PASCAL", "Trans-cerebellum"),
        ("Diverse Fetal Head Images", "Diverse"),
        ("Test-Dataset-Segmentation", "Diverse"),
        ("Orginal_train_images_to_959_661", None),
        ("SegmentationClass", None),
        ("phantom_truth", None),
        ("Patient00168_Plane3_3_of_3.png", None),
    ],
)
def test_plane_names_match_case_insensitively_and_fuzzily(name, plane):
    assert plane_of_name(name) == plane


# ------------------------------------------------------------------ hand-made bad input

LABELS = np.array(  # 12x8, the record's aspect (about 1.45), every class
    [[0] * 12, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]]
    + [[0, 1, 2, 2, 1, 1, 1, 3, 3, 3, 1, 0]] * 4
    + [[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0], [0] * 12],
    np.uint8,
)
TRANS_COLOURS = np.array([BLACK, RED, GREEN, BLUE], np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    """Grayscale, or RGB written as RGB (cv2 wants BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array[..., ::-1] if array.ndim == 3 else array)


def write_pair(raw: Path, stem: str, *, mask_rgb: np.ndarray | None = None, image=True) -> None:
    """One Trans-thalamic image and its RGB mask, as an extracted plane folder."""
    if image:
        write_png(raw / "Trans-thalamic" / "Trans-thalamic" / f"{stem}.png", LABELS * 60)
    if mask_rgb is not None:
        write_png(
            raw / "Trans-thalamic-Segmentation" / "SegmentationClass" / f"{stem}.png", mask_rgb
        )


@pytest.fixture
def small_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    write_pair(raw, "Patient00001_Plane1_1_of_1", mask_rgb=TRANS_COLOURS[LABELS])
    return raw


def test_bad_files_are_listed_in_the_report_and_skipped(small_raw, tmp_path):
    bad_image = small_raw / "Trans-thalamic" / "Trans-thalamic" / "Patient00002_Plane1_1_of_1.png"
    write_pair(small_raw, "Patient00002_Plane1_1_of_1", mask_rgb=TRANS_COLOURS[LABELS])
    bad_image.write_bytes(b"not a png")
    write_pair(small_raw, "Patient00003_Plane1_1_of_1")  # no mask
    write_pair(small_raw, "Patient00004_Plane1_1_of_1", mask_rgb=TRANS_COLOURS[LABELS], image=False)
    square = np.zeros((12, 12, 3), np.uint8)
    write_pair(small_raw, "Patient00005_Plane1_1_of_1", mask_rgb=square)  # other aspect
    report = prepare_dataset(small_raw, tmp_path / "out")
    masks = "Trans-thalamic-Segmentation/SegmentationClass"
    assert {s["file"]: s["reason"] for s in report["skipped"]} == {
        "Trans-thalamic/Trans-thalamic/Patient00002_Plane1_1_of_1.png": "unreadable image",
        "Trans-thalamic/Trans-thalamic/Patient00003_Plane1_1_of_1.png": "image without mask",
        f"{masks}/Patient00004_Plane1_1_of_1.png": "mask without image",
        f"{masks}/Patient00005_Plane1_1_of_1.png": "mask 12x12 has another aspect than image 12x8",
    }
    index = read_csv(tmp_path / "out" / "index.csv")
    assert [row["subject"] for row in index] == ["Patient00001"]
    assert list(index[0]) == [*INDEX_COLUMNS, "plane"]
    assert sorted(p.name for p in (tmp_path / "out" / "masks" / "Trans-thalamic").iterdir()) == [
        "Patient00001_Plane1_1_of_1.png"
    ]


def test_a_mask_of_the_same_aspect_is_resized_nearest_and_reported(small_raw, tmp_path):
    doubled = np.repeat(np.repeat(TRANS_COLOURS[LABELS], 2, axis=0), 2, axis=1)  # 24x16
    write_pair(small_raw, "Patient00002_Plane1_1_of_1", mask_rgb=doubled)
    report = prepare_dataset(small_raw, tmp_path / "out")
    mask = read_png(
        tmp_path / "out" / "masks" / "Trans-thalamic" / "Patient00002_Plane1_1_of_1.png"
    )
    np.testing.assert_array_equal(mask, LABELS)
    assert report["resized_masks"] == [
        {
            "mask": "Trans-thalamic-Segmentation/SegmentationClass/Patient00002_Plane1_1_of_1.png",
            "from": [24, 16],
            "to": [12, 8],
        }
    ]
    assert report["skipped"] == []


def test_anti_aliased_colours_are_mapped_and_far_ones_counted(small_raw, tmp_path):
    mask_rgb = TRANS_COLOURS[LABELS]
    mask_rgb[1, 1] = (250, 4, 4)  # brain, a little off
    mask_rgb[2, 2] = (20, 235, 10)  # CSP, distance 30 from green
    mask_rgb[2, 7] = (128, 128, 0)  # halfway red/green: unmapped -> background
    mask_rgb[3, 7] = YELLOW  # the diverse folder's CSP colour has no meaning in Trans-*
    write_pair(small_raw, "Patient00001_Plane1_1_of_1", mask_rgb=mask_rgb)
    report = prepare_dataset(small_raw, tmp_path / "out")
    mask = read_png(
        tmp_path / "out" / "masks" / "Trans-thalamic" / "Patient00001_Plane1_1_of_1.png"
    )
    expected = LABELS.copy()
    expected[2, 7] = expected[3, 7] = 0
    np.testing.assert_array_equal(mask, expected)
    stem_mask = "Trans-thalamic-Segmentation/SegmentationClass/Patient00001_Plane1_1_of_1.png"
    assert report["unmapped_pixels"] == {"total": 2, "per_mask": {stem_mask: 2}}


def test_map_colours_uses_the_given_palette():
    rgb = np.array([[YELLOW, (250, 250, 8), GREEN, (128, 0, 0)]], np.uint8)
    labels, unmapped = map_colours(rgb, PALETTES["diverse"], tolerance=48)
    assert labels.tolist() == [[2, 2, 0, 0]] and unmapped == 2  # green and dark red unknown
    labels, unmapped = map_colours(rgb, PALETTES["voc"], tolerance=48)
    assert labels.tolist() == [[0, 0, 0, 1]] and unmapped == 3


def test_a_folder_that_is_not_the_record_is_an_error_naming_both(tmp_path):
    raw = tmp_path / "raw"
    write_png(raw / "holiday" / "beach.png", LABELS)
    (raw / "notes.txt").write_text("hello")
    with pytest.raises(DatasetLayoutError) as error:
        prepare_dataset(raw, tmp_path / "out")
    message = str(error.value)
    assert "Trans-thalamic" in message and "Diverse Fetal Head Images" in message
    assert "['holiday', 'notes.txt']" in message and "outside any plane folder" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    with pytest.raises(FileNotFoundError, match="no-such-dir is not a folder"):
        prepare_dataset(tmp_path / "no-such-dir", tmp_path / "out")


def test_the_bulk_download_zip_of_plane_zips_is_read(small_raw, tmp_path):
    plane_zip = io.BytesIO()
    with zipfile.ZipFile(plane_zip, "w") as archive:
        for path in sorted(p for p in small_raw.rglob("*") if p.is_file()):
            archive.write(path, path.relative_to(small_raw).as_posix())
    bulk = tmp_path / "bulk"
    bulk.mkdir()
    with zipfile.ZipFile(bulk / "8265464.zip", "w") as archive:
        archive.writestr("Trans-thalamic.zip", plane_zip.getvalue())
        archive.writestr("README.md", "not data")
    report = prepare_dataset(bulk, tmp_path / "out")
    mask = read_png(
        tmp_path / "out" / "masks" / "Trans-thalamic" / "Patient00001_Plane1_1_of_1.png"
    )
    np.testing.assert_array_equal(mask, LABELS)
    assert report["ignored"] == {
        "outside any plane folder": {"files": 1, "folders": ["8265464.zip"]}
    }


# A VOC export whose labelmap.txt gives other colours than the registry's VOC palette.
LABELMAP_COLOURS = np.array([BLACK, (10, 20, 200), (200, 200, 200), (250, 0, 250)], np.uint8)
LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\nBrain:10,20,200::\n"
LABELMAP += "csp:200,200,200::\nLv:250,0,250::\n"


def write_voc_only_plane(raw: Path, labelmap: str | None) -> Path:
    """One Trans-cerebellum image masked only by a Pascal VOC export (as the record's)."""
    stem = "Patient00009_Plane3_1_of_1"
    write_png(raw / "Trans-cerebellum" / "Trans-cerebellum" / f"{stem}.png", LABELS * 60)
    export = raw / "Trans-cerebellum-PASCAL"
    write_png(export / "SegmentationClass" / f"{stem}.png", LABELMAP_COLOURS[LABELS])
    if labelmap is not None:
        (export / "labelmap.txt").write_text(labelmap)
    return Path("masks") / "Trans-cerebellum" / f"{stem}.png"


def test_a_voc_export_is_read_with_its_labelmap_colours(small_raw, tmp_path):
    mask = write_voc_only_plane(small_raw, LABELMAP)
    report = prepare_dataset(small_raw, tmp_path / "out")
    np.testing.assert_array_equal(read_png(tmp_path / "out" / mask), LABELS)
    assert report["voc_labelmaps"] == ["Trans-cerebellum-PASCAL/labelmap.txt"]
    assert report["unmapped_pixels"]["total"] == 0


def test_a_voc_export_without_labelmap_falls_back_to_the_voc_palette(small_raw, tmp_path):
    mask = write_voc_only_plane(small_raw, labelmap=None)
    report = prepare_dataset(small_raw, tmp_path / "out")
    assert report["voc_labelmaps"] == []
    # None of the export's colours is a VOC palette colour: all but black stay unmapped.
    assert report["unmapped_pixels"]["total"] == int((LABELS > 0).sum())
    assert not read_png(tmp_path / "out" / mask).any()


def test_a_labelmap_naming_an_unknown_class_is_an_error_naming_both(small_raw, tmp_path):
    write_voc_only_plane(small_raw, LABELMAP + "Skull:1,2,3::\n")
    with pytest.raises(DatasetLayoutError, match=r"labelmap\.txt:6: unknown class 'Skull'"):
        prepare_dataset(small_raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_read_labelmap_names_a_malformed_line_and_a_shared_colour():
    assert read_labelmap(LABELMAP.encode(), "l.txt") == {
        (0, 0, 0): 0,
        (10, 20, 200): 1,
        (200, 200, 200): 2,
        (250, 0, 250): 3,
    }
    with pytest.raises(DatasetLayoutError, match=r"l\.txt:2: expected 'name:r,g,b::'"):
        read_labelmap(b"# header\nBrain:128,0::\n", "l.txt")
    with pytest.raises(DatasetLayoutError, match=r"l\.txt:2: colour \(1, 1, 1\) names two"):
        read_labelmap(b"Brain:1,1,1::\nCSP:1,1,1::\n", "l.txt")


def test_an_existing_out_is_kept_unless_overwrite(small_raw, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(small_raw, out)
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        prepare_dataset(small_raw, out)
    assert (out / "mine.txt").read_text() == "keep me"
    prepare_dataset(small_raw, out, overwrite=True)
    assert not (out / "mine.txt").exists()
    assert len(read_csv(out / "index.csv")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]  # no staging left


@pytest.mark.parametrize("content", ["a file", "a folder of other files"])
def test_overwrite_replaces_only_an_earlier_prepared_copy(small_raw, tmp_path, content):
    out = tmp_path / "out"
    if content == "a file":
        out.write_text("not a folder")
    else:
        out.mkdir()
        (out / "thesis.tex").write_text("keep me")
        (out / "index.csv").write_text("image,mask\n")  # no prepare_report.json beside it
    before = tree(out)
    with pytest.raises(FileExistsError, match=rf"out_dir {out} .*(file|holds no prepared copy)"):
        prepare_dataset(small_raw, out, overwrite=True)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]
    (tmp_path / "empty").mkdir()
    prepare_dataset(small_raw, tmp_path / "empty", overwrite=True)  # nothing to lose
    assert (tmp_path / "empty" / "index.csv").is_file()


def tree(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_an_out_that_appears_while_preparing_is_not_swapped_out(small_raw, tmp_path, monkeypatch):
    """Another process finishing the same OUT first keeps its result (a reader of it may be
    running); this run fails instead of replacing it without overwrite."""
    out = tmp_path / "out"
    real_summarise = fetal_head._summarise

    def other_process_finishes_first(*args):
        monkeypatch.setattr(fetal_head, "_summarise", real_summarise)
        prepare_dataset(small_raw, out)
        (out / "cache").mkdir()  # the other process is already using it
        return real_summarise(*args)

    monkeypatch.setattr(fetal_head, "_summarise", other_process_finishes_first)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        prepare_dataset(small_raw, out)
    assert (out / "cache").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw"]


def why_outdated(raw_dir: Path, prepared_dir: Path) -> str | None:
    return why_outdated_for(raw_dir, prepared_dir, FetalHeadReader())


def test_the_prepared_copy_records_its_source_and_tells_what_changed(small_raw, tmp_path):
    out = tmp_path / "out"
    assert why_outdated(small_raw, out) == "not prepared yet"
    prepare_dataset(small_raw, out)
    source = json.loads((out / SOURCE_FILE).read_text())
    assert source["reader_version"] == READER_VERSION
    image = "Trans-thalamic/Trans-thalamic/Patient00001_Plane1_1_of_1.png"
    assert source["files"][image][0] == (small_raw / image).stat().st_size
    assert why_outdated(small_raw, out) is None

    write_pair(small_raw, "Patient00002_Plane1_1_of_1", mask_rgb=TRANS_COLOURS[LABELS])
    os.utime(small_raw / image, ns=(0, 0))  # rewritten: same size, another mtime
    assert why_outdated(small_raw, out) == (
        "root changed since it was prepared: 2 files added, 0 removed, 1 changed"
    )
    prepare_dataset(small_raw, out, overwrite=True)
    assert why_outdated(small_raw, out) is None
    (small_raw / image).unlink()
    assert "0 files added, 1 removed, 0 changed" in why_outdated(small_raw, out)

    (out / SOURCE_FILE).write_text(json.dumps(source | {"reader_version": 0}))
    assert why_outdated(small_raw, out) == (
        f"prepared by reader fetal_head version 0, this is fetal_head {READER_VERSION}"
    )
    (out / SOURCE_FILE).unlink()
    assert "source.json is missing" in why_outdated(small_raw, out)


def test_an_interrupted_run_leaves_no_out(small_raw, tmp_path, monkeypatch):
    def full_disk(path, array):
        raise OSError("disk full")

    monkeypatch.setattr(fetal_head, "write_png", full_disk)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(small_raw, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_out_and_raw_inside_one_another_are_refused(small_raw):
    with pytest.raises(ValueError, match="must not contain one another"):
        prepare_dataset(small_raw, small_raw / "prepared")
    with pytest.raises(ValueError, match="must not contain one another"):
        prepare_dataset(small_raw, small_raw.parent, overwrite=True)
    assert (small_raw / "Trans-thalamic" / "Trans-thalamic").is_dir()


def test_a_broken_zip_is_an_error_naming_it(small_raw):
    (small_raw / "Trans-ventricular.zip").write_bytes(b"truncated download")
    with pytest.raises(DatasetLayoutError, match=r"Trans-ventricular\.zip: not a readable zip"):
        prepare_dataset(small_raw, small_raw.parent / "out")


# ------------------------------------------------------------------ command line


def test_cli_prepares_the_phantom_and_writes_no_hydra_outputs(phantom_raw, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "src.prepare", f"raw_dir={phantom_raw}", "out_dir=prepared"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"prepared {len(truth_by_stem(phantom_raw))} images" in done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no outputs/, no .log


def test_cli_config_makes_raw_and_out_mandatory():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("prepare")
    assert OmegaConf.is_missing(cfg, "raw_dir") and OmegaConf.is_missing(cfg, "out_dir")
    assert cfg.overwrite is False
