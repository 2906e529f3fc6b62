"""LGG brain MRI on its synthetic fixture (the exact kaggle_3m layout): the reader, the grouped
split, per-patient Dice and slice detection, 3-channel batches, training and evaluation."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import cv2
import hydra
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from src.data.classes import LGG, class_set_for
from src.data.images import read_image, write_image
from src.data.prepared import read_index
from src.data.readers.lgg import LGGLayoutError, LGGReader
from src.data.splits import SPLIT_NAMES
from src.evaluation.volumes import detection, per_volume, slice_counts, volume_sections
from src.inference.checkpoint import checkpoint_payload
from src.predict import predict
from src.report import job_metrics
from src.synthetic.lgg import write_lgg_record
from src.train import train

ROOT = Path(__file__).resolve().parents[3]
SIZE = 32
# The record's tifs as the generator writes them: 8 patients, 4 without abnormality.
FIXTURE = dict(n_patients=8, slices_per_patient=(4, 6), size=SIZE, tumour_free=4, seed=0)


@pytest.fixture(scope="module")
def lgg_raw(tmp_path_factory) -> tuple[Path, dict]:
    """Read-only: copy what a test changes."""
    out = tmp_path_factory.mktemp("lgg") / "raw"
    return out, write_lgg_record(out, **FIXTURE)


@pytest.fixture(scope="module")
def lgg_prepared(lgg_raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lgg-prepared") / "prepared"
    return out, LGGReader().prepare(lgg_raw[0], out)


def test_the_reader_counts_patients_slices_and_tumour_slices(lgg_raw, lgg_prepared):
    (raw, tumour_slices), (prepared, report) = lgg_raw, lgg_prepared
    tifs = sorted((raw / "kaggle_3m").glob("*/*.tif"))
    rows = read_index(prepared)
    assert len(rows) == report["slices"] == len(tifs) // 2
    assert report["patients"] == rows["subject"].nunique() == 8
    assert report["slices_with_tumour"] == sum(tumour_slices.values()) > 0
    assert report["patients_with_tumour"] == 4
    per_patient = {p: v["slices_with_tumour"] for p, v in report["per_patient"].items()}
    assert per_patient == tumour_slices
    assert set(rows.columns) >= {"slice", "patient_tumour"}
    by_patient = rows.groupby("subject")["patient_tumour"].agg(set).to_dict()
    assert by_patient == {p: {int(n > 0)} for p, n in tumour_slices.items()}
    assert rows["pixel_size_mm"].isna().all()  # not in the record
    assert (rows["orig_width"] == SIZE).all() and (rows["orig_height"] == SIZE).all()
    first = rows[rows["subject"] == rows["subject"].iat[0]]
    assert first["slice"].tolist() == list(range(1, len(first) + 1))


def test_prepared_slices_are_the_tifs_in_rgb_order_and_masks_are_labels(lgg_raw, lgg_prepared):
    (raw, _), (prepared, _) = lgg_raw, lgg_prepared
    rows = read_index(prepared)
    checked_tumour = False
    for row in rows.to_dict("records")[:12]:
        stem = f"{row['subject']}_{row['slice']}"
        tif = raw / "kaggle_3m" / row["subject"] / f"{stem}.tif"
        rgb = np.asarray(Image.open(tif))  # PIL: the tif's own (RGB) channel order
        assert rgb.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(read_image(prepared / row["image"], 3), rgb)
        truth = np.asarray(Image.open(tif.with_name(f"{stem}_mask.tif")))
        mask = cv2.imread(str(prepared / row["mask"]), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, (truth == 255).astype(np.uint8))
        checked_tumour |= bool(mask.any())
    assert checked_tumour
    # The abnormality is bright in FLAIR: the green channel, as in the record.
    image = read_image(prepared / rows["image"].iat[2], 3).astype(float)
    mask = cv2.imread(str(prepared / rows["mask"].iat[2]), cv2.IMREAD_UNCHANGED) == 1
    assert mask.any() and image[mask, 1].mean() > image[mask, 0].mean() + 40


def _one_patient_copy(lgg_raw, tmp_path: Path) -> Path:
    raw, _ = lgg_raw
    patient = sorted((raw / "kaggle_3m").iterdir())[0]
    root = tmp_path / "raw"
    shutil.copytree(patient, root / "kaggle_3m" / patient.name)
    return root / "kaggle_3m" / patient.name


def _remove(folder: Path, name: str) -> None:
    (folder / f"{folder.name}_{name}").unlink()


def _grey_image(folder: Path, name: str) -> None:
    cv2.imwrite(str(folder / f"{folder.name}_{name}"), np.zeros((SIZE, SIZE), np.uint8))


def _small_mask(folder: Path, name: str) -> None:
    cv2.imwrite(str(folder / f"{folder.name}_{name}"), np.zeros((SIZE, SIZE - 1), np.uint8))


def _grey_mask(folder: Path, name: str) -> None:
    cv2.imwrite(str(folder / f"{folder.name}_{name}"), np.full((SIZE, SIZE), 128, np.uint8))


def _stray_file(folder: Path, name: str) -> None:
    (folder / name).write_text("notes")


@pytest.mark.parametrize(
    ("damage", "file", "message"),
    [
        (_remove, "2.tif", "a mask without its image (slice 2)"),
        (_remove, "3_mask.tif", "an image without its mask (slice 3)"),
        (_grey_image, "2.tif", "expected an 8-bit 3-channel (RGB) slice"),
        (_small_mask, "2_mask.tif", "_2_mask.tif is 31x32 but"),
        (_grey_mask, "2_mask.tif", "values [128]; expected (0, 255)"),
        (_stray_file, "notes.txt", "notes.txt: expected only files"),
    ],
    ids=["mask-only", "image-only", "grey-image", "mask-size", "mask-values", "stray-file"],
)
def test_a_bad_layout_is_an_error_naming_the_file(lgg_raw, tmp_path, damage, file, message):
    folder = _one_patient_copy(lgg_raw, tmp_path)
    damage(folder, file)
    with pytest.raises(LGGLayoutError, match=re.escape(message)):
        LGGReader().prepare(tmp_path / "raw", tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_a_root_without_patient_folders_is_named(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "readme.txt").write_text("x")
    with pytest.raises(LGGLayoutError, match="does not look like the LGG data"):
        LGGReader().prepare(tmp_path / "raw", tmp_path / "prepared")


def test_the_kaggle_3m_folder_itself_is_a_root(lgg_raw, tmp_path):
    folder = _one_patient_copy(lgg_raw, tmp_path)
    report = LGGReader().prepare(folder.parent, tmp_path / "prepared")
    assert report["patients"] == 1 and report["record"] == "."


def test_the_class_set_is_registered():
    assert class_set_for(["Background", "Abnormality"]) is LGG
    assert LGG.num_classes == 2 and not LGG.head_labels


# ---------------------------------------------------------------------------- volumes


def _counts_row(volume: str, true: int, pred: int, both: int) -> dict:
    return {"id": f"{volume}-{true}-{pred}", "subject": volume} | {
        "pixels_true_abnormality": true,
        "pixels_pred_abnormality": pred,
        "pixels_both_abnormality": both,
    }


def test_per_patient_dice_pools_the_slices_of_each_patient():
    rows = [
        _counts_row("A", 10, 8, 6),
        _counts_row("A", 0, 2, 0),  # a false positive on an empty slice
        _counts_row("A", 4, 0, 0),  # a missed edge slice
        _counts_row("A", 0, 0, 0),
        _counts_row("B", 0, 0, 0),  # no tumour, none predicted: NaN, not in the mean
        _counts_row("C", 5, 5, 5),
    ]
    result = per_volume(rows, "subject", ["abnormality"])
    volumes = result["volumes"]
    # A: 2 * 6 / ((10 + 0 + 4 + 0) + (8 + 2 + 0 + 0)) = 12 / 24
    assert volumes["A"]["dice_abnormality"] == pytest.approx(0.5)
    assert volumes["A"]["slices"] == 4 and volumes["A"]["pixels_true_abnormality"] == 14
    assert math.isnan(volumes["B"]["dice_abnormality"])
    assert volumes["C"]["dice_abnormality"] == 1.0
    assert result["num_volumes"] == 3
    assert result["mean"]["dice_abnormality"] == pytest.approx(0.75)
    assert result["mean"]["dice_mean"] == pytest.approx(0.75)
    with pytest.raises(KeyError, match="no column 'patient'"):
        per_volume(rows, "patient", ["abnormality"])


def test_per_patient_dice_from_masks_equals_the_dice_of_the_stacked_volume():
    rng = np.random.default_rng(0)
    truth = rng.random((5, 16, 16)) > 0.7
    predicted = rng.random((5, 16, 16)) > 0.6
    truth[0], predicted[4] = False, False
    rows = [
        {"subject": "P"} | slice_counts("abnormality", t, p)
        for t, p in zip(truth, predicted, strict=True)
    ]
    expected = 2 * (truth & predicted).sum() / (truth.sum() + predicted.sum())
    dice = per_volume(rows, "subject", ["abnormality"])["volumes"]["P"]["dice_abnormality"]
    assert dice == pytest.approx(expected)


def test_detection_counts_slices_by_any_pixel_and_by_a_minimum_area():
    rows = [
        _counts_row("A", 10, 8, 6),  # TP
        _counts_row("A", 5, 0, 0),  # FN
        _counts_row("A", 3, 2, 2),  # TP with any pixel; FN from 3 pixels on
        _counts_row("A", 0, 0, 0),  # TN
        _counts_row("A", 0, 2, 0),  # FP with any pixel; TN from 3 pixels on
        _counts_row("A", 0, 0, 0),  # TN
    ]
    strict = detection(rows, ["abnormality"])["per_class"]["abnormality"]
    assert (strict["tp"], strict["fn"], strict["tn"], strict["fp"]) == (2, 1, 2, 1)
    assert strict["sensitivity"] == pytest.approx(2 / 3)
    assert strict["specificity"] == pytest.approx(2 / 3)
    result = detection(rows, ["abnormality"], min_area_px=3)
    assert result["min_area_px"] == 3
    area = result["per_class"]["abnormality"]
    assert (area["tp"], area["fn"], area["tn"], area["fp"]) == (1, 2, 3, 0)
    assert area["specificity"] == 1.0
    no_negatives = detection(rows[:1], ["abnormality"])["per_class"]["abnormality"]
    assert math.isnan(no_negatives["specificity"])
    assert volume_sections(rows, ["abnormality"], None) == {}
    assert set(volume_sections(rows, ["abnormality"], "subject")) == {"per_volume", "detection"}


# ---------------------------------------------------------------------------- data module


def _datamodule(lgg_raw, tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            [
                "data=lgg",
                f"data.root={lgg_raw[0]}",
                f"data.cache_dir={tmp_path / 'prepared'}",
                f"data.image_size=[{SIZE},{SIZE}]",
                "data.batch_size=4",
                "data.num_workers=0",
                "data.n_folds=4",
                f"paths.output_dir={tmp_path}",
                *overrides,
            ],
        )
    return hydra.utils.instantiate(cfg.data)


def test_no_patient_is_in_two_splits_and_each_split_has_both_strata(lgg_raw, tmp_path):
    dm = _datamodule(lgg_raw, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    patients = {split: set(dm.split_rows(split)["subject"]) for split in SPLIT_NAMES}
    assert sum(len(p) for p in patients.values()) == len(set().union(*patients.values())) == 8
    for split in SPLIT_NAMES:
        assert set(dm.split_rows(split)["patient_tumour"]) == {0, 1}, split


def test_rgb_slices_go_through_cache_and_augmentation_as_3_channel_batches(lgg_raw, tmp_path):
    dm = _datamodule(lgg_raw, tmp_path, "augmentation=strong")
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["mask"].shape == (4, SIZE, SIZE)
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    test = dm.dataset("test")[0]  # unaugmented: the prepared RGB slice, channels first
    rgb = read_image(dm.prepared_dir / test["id"], 3)
    np.testing.assert_array_equal(
        (test["image"] * 255).round().byte().numpy(), rgb.transpose(2, 0, 1)
    )


def test_the_ultrasound_augmentation_refuses_rgb_slices_by_name(lgg_raw, tmp_path):
    dm = _datamodule(lgg_raw, tmp_path, "augmentation=ultrasound")
    dm.prepare_data()
    dm.setup("fit")
    with pytest.raises(ValueError, match="expected a uint8 grayscale"):
        next(iter(dm.train_dataloader()))


def test_the_data_config_generates_its_synthetic_record_where_no_root_is_given(tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            [
                "+experiment=lgg_attention_unet",
                "data=lgg_synthetic",
                f"paths.data_dir={tmp_path}",
                "data.synthetic.generate.n_patients=4",
                "data.synthetic.generate.tumour_free=1",
                f"data.synthetic.generate.size={SIZE}",
                f"paths.output_dir={tmp_path}",
            ],
        )
    dm = hydra.utils.instantiate(cfg.data)
    assert dm.root == tmp_path / "lgg_synthetic" and dm.is_synthetic
    dm.prepare_data()
    patients = sorted(p.name for p in (dm.root / "kaggle_3m").iterdir() if p.is_dir())
    assert len(patients) == 4
    assert len(read_index(dm.prepared_dir)) == sum(
        len(list((dm.root / "kaggle_3m" / p).glob("*_mask.tif"))) for p in patients
    )


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "model",
    [["model.base_channels=8"], ["model=smp_unet", "model.encoder_name=resnet18"]],
    ids=["attention_unet", "smp_unet"],
)
def test_fast_dev_run_trains_and_the_evaluation_scores_patients(lgg_raw, tmp_path, model):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            [
                "+experiment=lgg_attention_unet",
                "trainer.fast_dev_run=true",
                f"data.root={lgg_raw[0]}",
                f"data.cache_dir={tmp_path / 'prepared'}",
                f"data.image_size=[{SIZE},{SIZE}]",
                "data.batch_size=4",
                "data.num_workers=0",
                "data.n_folds=4",
                "callbacks.progress_bar=null",
                "callbacks.model_summary=null",
                f"paths.output_dir={tmp_path}",
                *model,
            ],
        )
    assert OmegaConf.select(cfg, "model.in_channels") == 3
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    test_patients = {row["subject"] for row in summary["per_image"]}
    per_volume_section = summary["per_volume"]
    assert per_volume_section["column"] == "subject"
    assert set(per_volume_section["volumes"]) == test_patients
    slices = sum(v["slices"] for v in per_volume_section["volumes"].values())
    assert slices == summary["num_images"]
    found = summary["detection"]["per_class"]["abnormality"]
    assert found["tp"] + found["fn"] + found["tn"] + found["fp"] == summary["num_images"]
    truth_positive = sum(row["pixels_true_abnormality"] > 0 for row in summary["per_image"])
    assert found["tp"] + found["fn"] == truth_positive > 0
    # The sweep report's columns (src.report) read the same sections.
    row = job_metrics(summary)
    expected = per_volume_section["mean"]["dice_mean"]  # null (NaN) without any abnormality
    expected = math.nan if expected is None else expected
    assert row["volume_dice_mean"] == pytest.approx(expected, nan_ok=True)
    assert row["slice_sensitivity"] == pytest.approx(found["sensitivity"])


def test_predict_reads_rgb_images_for_a_3_channel_model(tmp_path):
    """A Conv2d(3, 2, 1) that calls abnormality where the red channel is bright: the red
    square must come out, not the blue one (an image read in BGR order would swap them)."""
    config = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 2, "kernel_size": 1}
    weight = torch.zeros(2, 3, 1, 1)
    weight[1, 0] = 20.0
    path = tmp_path / "model.ckpt"
    torch.save(
        {
            "state_dict": {"net.weight": weight, "net.bias": torch.tensor([0.0, -10.0])},
            "sonoseg": checkpoint_payload(config, LGG.names, (SIZE, SIZE), 3),
        },
        path,
    )
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[4:12, 4:12, 0] = 255  # red
    image[20:28, 20:28, 2] = 255  # blue
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "slice.png", image)
    report = predict(path, tmp_path / "in", tmp_path / "out")
    labels = cv2.imread(str(tmp_path / "out" / report.rows[0]["mask"]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(labels, (image[..., 0] == 255).astype(np.uint8))
