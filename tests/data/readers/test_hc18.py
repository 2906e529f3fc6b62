"""HC18 on the real scans in tests/fixtures/hc18: the reader, the annotations' head circumference,
grouped and stratified splits, a tiny training run, its evaluation and the submission CSVs."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import cv2
import hydra
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from src.biometry import measure_head
from src.data.classes import HC18_HEAD
from src.data.prepared import read_index
from src.data.readers.hc18 import (
    SUBMISSION_COLUMNS,
    SUBMISSION_CSV,
    HC18LayoutError,
    HC18Reader,
    read_annotation,
    read_pixel_csv,
)
from src.ellipse import ramanujan_circumference
from src.evaluation.evaluate import biometry_columns
from src.inference.checkpoint import Ensemble, load_ensemble
from src.inference.predictor import predict_labels
from src.predict import predict

REPO = Path(__file__).resolve().parents[3]
HC18 = REPO / "tests" / "fixtures" / "hc18"
CSV_NAME = "training_set_pixel_size_and_HC.csv"


@pytest.fixture(scope="module")
def hc18_prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hc18") / "prepared"
    HC18Reader().prepare(HC18, out)
    return out


def csv_rows() -> dict[str, dict[str, str]]:
    with (HC18 / CSV_NAME).open(newline="") as f:
        return {row["filename"]: row for row in csv.DictReader(f)}


def test_the_reader_finds_every_scan_with_its_subject_size_and_stratum(hc18_prepared):
    listed = csv_rows()
    rows = read_index(hc18_prepared)
    assert len(listed) >= 30
    assert sorted(Path(image).name for image in rows["image"]) == sorted(listed)
    assert rows["subject"].nunique() == 21
    assert set(rows.loc[rows["image"].str.contains("014_"), "subject"]) == {"014"}
    assert (rows["orig_width"] == 800).all() and (rows["orig_height"] == 540).all()
    assert rows["hc_tertile"].value_counts().to_dict() == {1: 13, 2: 13, 3: 13}
    small, large = rows[rows["hc_tertile"] == 1], rows[rows["hc_tertile"] == 3]
    assert small["hc_mm"].max() < large["hc_mm"].min()
    report = json.loads((hc18_prepared / "prepare_report.json").read_text())
    assert report["images"] == len(listed) and report["skipped"] == []


def test_each_filled_annotation_gives_the_sonographers_head_circumference(hc18_prepared):
    """Within 0.07% on these 39 (filled) scans; up to 1.3% (always larger) without the inset."""
    for row in read_index(hc18_prepared).to_dict("records"):
        mask = cv2.imread(str(hc18_prepared / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) == {0, 1}
        head = measure_head(mask, HC18_HEAD.head_labels, row["pixel_size_mm"])
        assert head.hc == pytest.approx(row["hc_mm"], rel=0.002), row["image"]
        assert not head.check, row["image"]


@pytest.mark.parametrize("thickness", [1, 3])
def test_an_outline_is_filled_on_its_centre_line(tmp_path, thickness):
    a, b, scale = 150.2, 120.7, 1 << 8
    image = np.zeros((540, 800, 3), np.uint8)  # RGB, as some HC18 copies are
    centre, axes = (
        (round(400.3 * scale), round(270.6 * scale)),
        (round(a * scale), round(b * scale)),
    )
    cv2.ellipse(image, centre, axes, 30, 0, 360, (255, 255, 255), thickness, cv2.LINE_8, 8)
    path = tmp_path / "001_HC_Annotation.png"
    cv2.imwrite(str(path), image)
    head = measure_head(read_annotation(path).astype(np.uint8), (1,))
    assert head.hc == pytest.approx(ramanujan_circumference(a, b), rel=0.003)
    image[:, 390:410] = 0  # break the outline
    cv2.imwrite(str(path), image)
    with pytest.raises(ValueError, match="001_HC_Annotation.png.*closed"):
        read_annotation(path)
    with pytest.raises(ValueError, match="HC18 annotation"):
        read_annotation(HC18 / "README.md")


def copy_part(destination: Path, filenames: list[str]) -> Path:
    """A part of the record holding ``filenames`` (images, annotations, their CSV rows)."""
    (destination / "training_set").mkdir(parents=True)
    lines = (HC18 / CSV_NAME).read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if line.split(",")[0] in filenames]
    (destination / CSV_NAME).write_text("\n".join(kept) + "\n")
    for name in filenames:
        stem = Path(name).stem
        for file in (f"{stem}.png", f"{stem}_Annotation.png"):
            shutil.copy(HC18 / "training_set" / file, destination / "training_set" / file)
    return destination


def test_parts_under_one_root_are_read_together_and_an_overlap_is_an_error(tmp_path):
    root = tmp_path / "root"
    copy_part(root / "part-a", ["084_HC.png", "182_HC.png"])
    copy_part(root / "part-b", ["224_HC.png"])
    (root / "unrelated").mkdir()  # another dataset beside them is not read
    report = HC18Reader().prepare(root, tmp_path / "out")
    assert report["parts"] == ["part-a", "part-b"] and report["images"] == 3
    copy_part(root / "part-c", ["224_HC.png"])
    with pytest.raises(HC18LayoutError, match="224_HC.png is in both .*part-b.*part-c"):
        HC18Reader().prepare(root, tmp_path / "out2")


def test_bad_layouts_and_files_are_named(tmp_path):
    with pytest.raises(HC18LayoutError, match=f"{tmp_path}.*expected training_set/"):
        HC18Reader().prepare(tmp_path, tmp_path.parent / "out-none")
    part = copy_part(tmp_path / "part", ["084_HC.png", "182_HC.png"])
    (part / "training_set" / "182_HC_Annotation.png").unlink()
    report = HC18Reader().prepare(part, tmp_path / "out")
    assert report["images"] == 1
    assert report["skipped"] == [
        {
            "file": str(part / "training_set" / "182_HC_Annotation.png"),
            "reason": "missing annotation",
        }
    ]
    (part / CSV_NAME).write_text("filename,pixel size\n084_HC.png,0.1\n")
    with pytest.raises(HC18LayoutError, match=f"{CSV_NAME}: expected columns"):
        read_pixel_csv(part / CSV_NAME)


def test_splits_group_subjects_and_keep_the_head_size_mix(tmp_path):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            [
                "data=hc18",
                f"data.root={HC18}",
                f"data.cache_dir={tmp_path}",
                "data.n_folds=3",
                "data.image_size=[32,48]",
                f"paths.output_dir={tmp_path}",
            ],
        )
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    assert dm.class_names == ("background", "head")
    subjects = {s: set(dm.split_rows(s)["subject"]) for s in ("train", "val", "test")}
    assert not subjects["train"] & subjects["val"]
    assert not subjects["train"] & subjects["test"] and not subjects["val"] & subjects["test"]
    assert sum(map(len, subjects.values())) == 21
    for split in ("train", "val", "test"):
        assert set(dm.split_rows(split)["hc_tertile"]) == {1, 2, 3}, split


def test_the_submission_columns_are_the_annotations_ellipse_in_mm(hc18_prepared):
    """Through the evaluation's biometry, a mask's ellipse comes out in mm: centre within the
    image, semi-axes whose Ramanujan circumference is the sonographer's HC."""
    for row in read_index(hc18_prepared).head(6).to_dict("records"):
        mask = cv2.imread(str(hc18_prepared / row["mask"]), cv2.IMREAD_UNCHANGED)
        size = row["pixel_size_mm"]
        values = biometry_columns(mask, mask, size, HC18_HEAD, row["hc_mm"])
        assert 0 < values["ellipse_center_x"] < 800 * size
        assert 0 < values["ellipse_center_y"] < 540 * size
        a, b = values["ellipse_semi_axis_a"], values["ellipse_semi_axis_b"]
        assert a >= b and 0 <= values["ellipse_angle_rad"] < math.pi
        assert ramanujan_circumference(a, b) == pytest.approx(row["hc_mm"], rel=0.015)
        assert values["hc_reference_diff"] == pytest.approx(values["hc_pred"] - row["hc_mm"])


@pytest.fixture(scope="module")
def hc18_run(tiny_data, tmp_path_factory) -> Path:
    """A one-epoch HC18 run at 64 x 96 px, tested at the original size (test=true)."""
    from src.train import train

    run_dir = tmp_path_factory.mktemp("hc18-run")
    overrides = [
        "+experiment=hc18_unet_cpu",
        *tiny_data,
        f"data.root={HC18}",
        "data.n_folds=3",
        "data.image_size=[64,96]",
        "model.base_channels=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "eval.tta=false",
        f"paths.output_dir={run_dir}",
    ]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        train(compose("train", overrides))
    return run_dir


def test_a_tiny_run_is_evaluated_as_the_challenge_does(hc18_run):
    checkpoints = hc18_run / "checkpoints"
    summary = json.loads((checkpoints / "summary.json").read_text())
    assert summary["classes"] == ["head"]
    head = summary["per_class"]["head"]
    assert 0 <= head["dice"] <= 1 and head["hd95_mm"] >= 0 and head["assd_mm"] >= 0
    assert summary["per_stratum"]["column"] == "hc_tertile"
    per_image = pd.read_csv(checkpoints / "per_image.csv")
    test_images = json.loads((hc18_run / "splits.json").read_text())["test"]
    assert len(per_image) == len(test_images)
    # the reference HC is the CSV's, per image
    listed = csv_rows()
    for _, row in per_image.iterrows():
        assert row["hc_reference"] == float(listed[Path(row["id"]).name]["head circumference (mm)"])
    versus = summary["biometry"]["mm"]["hc_vs_reference"]
    assert versus["images"] == len(test_images)
    measured = per_image["hc_pred"].notna().sum()
    assert versus["prediction_missing"] == len(test_images) - measured
    if measured:
        assert versus["mean_abs"] == pytest.approx(per_image["hc_reference_diff"].abs().mean())
    with (checkpoints / SUBMISSION_CSV).open(newline="") as f:
        submission = list(csv.reader(f))
    assert tuple(submission[0]) == SUBMISSION_COLUMNS
    assert sorted(r[0] for r in submission[1:]) == sorted(Path(i).name for i in test_images)


def test_predict_on_a_test_set_folder_writes_the_submission(hc18_run, tmp_path):
    test_set = tmp_path / "test_set"
    test_set.mkdir()
    for name in ("084_HC.png", "182_HC.png", "224_HC.png"):
        shutil.copy(HC18 / "training_set" / name, test_set / name)
    pixel_csv = tmp_path / "test_set_pixel_size.csv"
    pixel_csv.write_text("filename,pixel size(mm)\n084_HC.png,0.1\n182_HC.png,0.2\n")
    report = predict(
        hc18_run / "checkpoints" / "epoch_000.ckpt",
        test_set,
        tmp_path / "out",
        pixel_size_csv=pixel_csv,
    )
    assert [Path(row["image"]).name for row in report.rows] == ["084_HC.png", "182_HC.png"]
    assert list(report.skipped) == [str(test_set / "224_HC.png")]
    assert "not listed in the pixel-size CSV" in report.skipped[str(test_set / "224_HC.png")]
    with (tmp_path / "out" / SUBMISSION_CSV).open(newline="") as f:
        submission = list(csv.reader(f))
    assert tuple(submission[0]) == SUBMISSION_COLUMNS
    # Every scan has a row: the one missing from the CSV with empty cells, not dropped.
    assert [r[0] for r in submission[1:]] == ["084_HC.png", "182_HC.png", "224_HC.png"]
    assert submission[3][1:] == [""] * 5
    with pytest.raises(ValueError, match="not both"):
        predict(
            hc18_run / "checkpoints" / "epoch_000.ckpt",
            test_set,
            tmp_path / "out2",
            pixel_size_mm=0.1,
            pixel_size_csv=pixel_csv,
        )


def test_fold_models_are_ensembled_and_mismatched_ones_refused(hc18_run, tiny_trained_run):
    checkpoint = hc18_run / "checkpoints" / "epoch_000.ckpt"
    single = load_ensemble([checkpoint])
    double = load_ensemble([checkpoint, checkpoint])
    assert isinstance(double.net, Ensemble) and double.class_names == single.class_names
    image = cv2.imread(str(HC18 / "training_set" / "084_HC.png"), cv2.IMREAD_GRAYSCALE)
    # The mean of identical probabilities is the single model's prediction.
    np.testing.assert_array_equal(
        predict_labels(double.net, image, double.image_size),
        predict_labels(single.net, image, single.image_size),
    )
    fetal_head = tiny_trained_run / "checkpoints" / "epoch_000.ckpt"
    with pytest.raises(ValueError, match="cannot be ensembled"):
        load_ensemble([checkpoint, fetal_head])


def test_predict_on_a_training_set_folder_compares_with_the_csv_hc(hc18_run, tmp_path):
    """External validation by prediction: the outlines beside the scans are left out (not
    skipped as errors), every listed scan is measured and set beside the CSV's HC."""
    folder = tmp_path / "training_set"  # three scans and their outlines, as in HC18's folder
    folder.mkdir()
    scans = sorted(HC18.glob("training_set/*_HC.png"))[:3]
    for scan in scans:
        shutil.copy(scan, folder / scan.name)
        shutil.copy(scan.with_name(scan.stem + "_Annotation.png"), folder)
    report = predict(
        hc18_run / "checkpoints" / "epoch_000.ckpt",
        folder,
        tmp_path / "out",
        pixel_size_csv=HC18 / CSV_NAME,
    )
    listed = csv_rows()
    assert sorted(Path(row["image"]).name for row in report.rows) == [s.name for s in scans]
    assert report.skipped == {}
    table = pd.read_csv(tmp_path / "out" / "biometry.csv")
    for _, row in table.iterrows():
        reference = float(listed[Path(row["image"]).name]["head circumference (mm)"])
        assert row["hc_reference"] == pytest.approx(reference)
        if row["head_found"]:
            assert row["hc_reference_diff"] == pytest.approx(row["hc"] - reference)
