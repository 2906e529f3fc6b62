"""write_phantom_record: the raw layout it writes, its palettes, truth and determinism."""

import csv
import io
import logging
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from src.data.readers.fetal_head import PALETTES
from src.synthetic.record import write_phantom_record

REPO = Path(__file__).resolve().parents[1]


def colours(png: bytes) -> set[tuple[int, int, int]]:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return set(map(tuple, np.unique(rgb, axis=0).tolist()))


def truth_labels(raw: Path, stem: str) -> np.ndarray:
    return cv2.imread(str(raw / "phantom_truth" / "labels" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)


def heads(raw: Path) -> list[dict[str, str]]:
    with (raw / "phantom_truth" / "heads.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def painted(labels: np.ndarray, palette: str) -> set[tuple[int, int, int]]:
    """The colours a mask of these labels must show in this palette."""
    present = set(np.unique(labels).tolist())
    return {colour for colour, label in PALETTES[palette].items() if label in present}


def stems_under(archive: zipfile.ZipFile, folder: str) -> list[str]:
    names = [n for n in archive.namelist() if n.startswith(folder + "/")]
    return sorted(Path(n).stem for n in names)


def test_the_layout_follows_the_record(phantom_raw):
    truth = heads(phantom_raw)
    diverse_truth = sorted(r["stem"] for r in truth if r["plane"] == "Diverse")
    with zipfile.ZipFile(phantom_raw / "Trans-thalamic.zip") as thalamic:
        images = stems_under(thalamic, "Trans-thalamic/Trans-thalamic")
        assert images and images == stems_under(
            thalamic, "Trans-thalamic-Segmentation/SegmentationClass"
        )
        assert images == stems_under(thalamic, "Trans-thalamic-PASCAL/SegmentationClass")
        assert all(re.fullmatch(r"Patient\d{5}_Plane1_\d_of_\d", s) for s in images)
        assert "Trans-thalamic/Trans-Thalamic-Pixel-Size.csv" in thalamic.namelist()
    with zipfile.ZipFile(phantom_raw / "Trans-ventricular.zip") as ventricular:
        nested = ventricular.read("Trans-ventricular/Trans-ventricular-segmentation-mask.zip")
        with zipfile.ZipFile(io.BytesIO(nested)) as masks:
            assert stems_under(masks, "SegmentationClass") == stems_under(
                ventricular, "Trans-ventricular/Trans-ventricular"
            )
    cerebellum = phantom_raw / "Trans-cerebellum" / "Trans-cerebellum"
    voc = phantom_raw / "Trans-cerebellum-PASCAL"
    assert sorted(p.stem for p in cerebellum.iterdir()) == sorted(
        p.stem for p in (voc / "SegmentationClass").iterdir()
    )
    assert (voc / "labelmap.txt").read_text().splitlines()[1:] == [  # spelled as the record's
        "background:0,0,0::",
        "Brain:128,0,0::",
        "CSP:0,128,0::",
        "LV:128,128,0::",
    ]
    with zipfile.ZipFile(phantom_raw / "Diverse Fetal Head Images.zip") as diverse:
        images = stems_under(diverse, "Diverse Fetal Head Images/Orginal_train_images_to_959_661")
        assert images == stems_under(
            diverse, "Diverse Fetal Head Images/Test-Dataset-Segmentation/SegmentationClass"
        )
    assert images == diverse_truth and "001_2HC" in images
    assert all(re.fullmatch(r"\d{3}_\d?HC", s) for s in images)


def test_masks_are_painted_with_each_folders_palette(phantom_raw):
    with zipfile.ZipFile(phantom_raw / "Diverse Fetal Head Images.zip") as diverse:
        folder = "Diverse Fetal Head Images/Test-Dataset-Segmentation/SegmentationClass"
        for name in (n for n in diverse.namelist() if n.startswith(folder)):
            expected = painted(truth_labels(phantom_raw, Path(name).stem), "diverse")
            assert colours(diverse.read(name)) == expected
    with zipfile.ZipFile(phantom_raw / "Trans-thalamic.zip") as thalamic:
        folder = "Trans-thalamic-Segmentation/SegmentationClass"
        names = [n for n in thalamic.namelist() if n.startswith(folder)]
        for name in names:
            expected = painted(truth_labels(phantom_raw, Path(name).stem), "trans")
            assert colours(thalamic.read(name)) == expected
        assert Image.open(io.BytesIO(thalamic.read(names[0]))).mode == "RGB"
    # The first image of every folder has CSP: yellow in the diverse folder, green elsewhere.
    first_diverse = truth_labels(phantom_raw, "001_HC")
    assert (255, 255, 0) in painted(first_diverse, "diverse")
    for path in (phantom_raw / "Trans-cerebellum-PASCAL" / "SegmentationClass").iterdir():
        assert Image.open(path).mode == "P"
        assert colours(path.read_bytes()) == painted(truth_labels(phantom_raw, path.stem), "voc")


def test_truth_describes_every_image_at_the_asked_size(phantom_raw):
    truth = heads(phantom_raw)
    labels_dir = phantom_raw / "phantom_truth" / "labels"
    assert sorted(p.stem for p in labels_dir.iterdir()) == sorted(r["stem"] for r in truth)
    for row in truth:
        labels = truth_labels(phantom_raw, row["stem"])
        assert labels.shape == (66, 96) and labels.dtype == np.uint8 and labels.max() <= 3
        assert 0 < float(row["cx"]) < 96 and 0 < float(row["cy"]) < 66
    sizes = {r["stem"]: r["pixel_size_mm"] for r in truth if r["plane"] == "Trans-thalamic"}
    with zipfile.ZipFile(phantom_raw / "Trans-thalamic.zip") as thalamic:
        text = thalamic.read("Trans-thalamic/Trans-Thalamic-Pixel-Size.csv").decode()
    rows = list(csv.reader(text.splitlines()))[1:]
    assert {Path(name).stem: value for name, value in rows} == sizes


def test_csp_and_lv_shares_are_about_those_of_the_record(tmp_path):
    raw = write_phantom_record(tmp_path / "raw", n_subjects=60, size=(48, 33), seed=1)
    truth = heads(raw)
    labels = [truth_labels(raw, row["stem"]) for row in truth]
    assert len(truth) > 120
    csp = np.mean([(m == 2).any() for m in labels])
    lv = np.mean([(m == 3).any() for m in labels])
    assert 0.35 < csp < 0.65 and 0.25 < lv < 0.55, (csp, lv)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_the_same_seed_gives_the_same_bytes_whatever_the_workers(tmp_path):
    one = write_phantom_record(tmp_path / "one", n_subjects=5, size=(32, 22), seed=3)
    two = write_phantom_record(tmp_path / "two", n_subjects=5, size=(32, 22), seed=3, workers=2)
    other = write_phantom_record(tmp_path / "other", n_subjects=5, size=(32, 22), seed=4)
    assert tree(one) == tree(two)
    assert tree(one)["Trans-thalamic.zip"] != tree(other)["Trans-thalamic.zip"]


def test_a_non_empty_out_dir_is_refused(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="raw is not empty"):
        write_phantom_record(tmp_path / "raw", n_subjects=2, size=(32, 22))
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["mine.txt"]
    with pytest.raises(ValueError, match="n_subjects >= 1"):
        write_phantom_record(tmp_path / "new", n_subjects=0)


def test_it_logs_how_many_images_it_wrote(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="src.synthetic.record"):
        raw = write_phantom_record(tmp_path / "raw", n_subjects=4, size=(32, 22))
    assert f"wrote a phantom record of {len(heads(raw))} images" in caplog.text


def test_cli_writes_a_record_and_no_hydra_outputs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "src.synth", "out_dir=raw", "n_subjects=2", "size=[32,22]"]
    done = subprocess.run(command + ["workers=1"], cwd=tmp_path, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert b"wrote a phantom record of" in done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no outputs/, no .log
    assert (tmp_path / "raw" / "Trans-thalamic.zip").is_file()
