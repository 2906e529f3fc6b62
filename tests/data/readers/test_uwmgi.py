"""UW-Madison GI tract MRI on a SYNTHETIC record in the competition's exact layout: RLE,
the reader, multi-label bitmasks through cache and augmentation, 2.5D stacking, grouped
splits, the competition score, training, evaluation and the submission CSV."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from src.data.cache import build_cache, open_cache
from src.data.classes import UWMGI, from_bitmask, to_bitmask
from src.data.context import context_ids
from src.data.datamodule import SegmentationDataModule, to_sample
from src.data.prepared import read_index
from src.data.readers.uwmgi import (
    SUBMISSION_COLUMNS,
    UWMGIReader,
    parse_scan_name,
    read_labels,
    rle_decode,
    rle_encode,
    scale_volume,
)
from src.eval import evaluate_checkpoint
from src.evaluation.uwmgi_metric import competition_score, hausdorff_3d, volume_score
from src.inference.checkpoint import load_model
from src.inference.volume import predict_volume_layout
from src.metrics import per_image_scores
from src.synthetic.uwmgi import write_uwmgi_record
from src.train import train

ROOT = Path(__file__).resolve().parents[3]
SLICES_PER_DAY = 6


@pytest.fixture(scope="module")
def uwmgi_raw(tmp_path_factory) -> Path:
    """6 cases x 2 days x 6 slices, 64x56 and 56x64 16-bit PNGs, train.csv with RLE."""
    out = tmp_path_factory.mktemp("uwmgi") / "raw"
    return write_uwmgi_record(out, n_cases=6, days_per_case=2, slices_per_day=SLICES_PER_DAY)


@pytest.fixture(scope="module")
def uwmgi_prepared(uwmgi_raw, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("uwmgi-prepared") / "prepared"
    return out, UWMGIReader().prepare(uwmgi_raw, out)


def _shapes(raw: Path) -> dict[str, tuple[int, int]]:
    """(H, W) per slice id, from the scans' file names."""
    shapes = {}
    for path in raw.glob("train/*/*/scans/*.png"):
        fields = parse_scan_name(path)
        shapes[f"{path.parent.parent.name}_slice_{fields['slice']:04d}"] = (
            fields["height"],
            fields["width"],
        )
    return shapes


# ---------------------------------------------------------------------------- RLE


def test_rle_is_row_major_and_one_based():
    mask = rle_decode("1 3 6 2", (2, 4))  # pixels 1-3 and 6-7 of a row-major 2x4 image
    assert mask.astype(int).tolist() == [[1, 1, 1, 0], [0, 1, 1, 0]]
    assert rle_encode(mask) == "1 3 6 2"
    assert rle_encode(np.zeros((3, 3), bool)) == "" and not rle_decode("", (3, 3)).any()


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 40, 2))
    mask = rng.random(shape) < rng.uniform(0.05, 0.95)
    assert np.array_equal(rle_decode(rle_encode(mask), shape), mask)


@pytest.mark.parametrize("bad", ["1", "a 2", "0 2", "5 10", "3 2 1 1"])
def test_bad_rle_is_an_error(bad):
    with pytest.raises(ValueError, match="RLE"):
        rle_decode(bad, (3, 3))


def test_rle_round_trip_on_the_fixture_strings(uwmgi_raw):
    shapes = _shapes(uwmgi_raw)
    labels = read_labels(uwmgi_raw / "train.csv")
    strings = [(i, s) for i, by_class in labels.items() for s in by_class.values()]
    assert sum(bool(s) for _, s in strings) > 0 and sum(not s for _, s in strings) > 0
    for slice_id, rle in strings:
        assert rle_encode(rle_decode(rle, shapes[slice_id])) == rle


# ---------------------------------------------------------------------------- reader


def test_reader_counts_and_columns(uwmgi_prepared):
    prepared, report = uwmgi_prepared
    rows = read_index(prepared)
    assert report["slices"] == len(rows) == 6 * 2 * SLICES_PER_DAY
    assert report["case_days"] == 12 and report["cases"] == 6 and not report["skipped"]
    # Edge slices hold no organ; the middle ones hold overlapping bowels.
    assert report["empty_slices"] == 24 and report["slices_with_overlap"] > 0
    assert {"case_day", "slice", "organs", "uwmgi_id"} <= set(rows.columns)
    first = rows[rows["uwmgi_id"] == "case101_day0_slice_0001"].iloc[0]
    assert (first["subject"], first["case_day"], first["slice"]) == ("case101", "case101_day0", 1)
    assert first["pixel_size_mm"] == pytest.approx(1.5) and first["organs"] == "none"


def test_prepared_bitmasks_hold_every_organ_of_the_csv(uwmgi_raw, uwmgi_prepared):
    import cv2

    prepared, _ = uwmgi_prepared
    labels = read_labels(uwmgi_raw / "train.csv")
    for row in read_index(prepared).to_dict("records"):
        bitmask = cv2.imread(str(prepared / row["mask"]), cv2.IMREAD_UNCHANGED)
        shape = (row["orig_height"], row["orig_width"])
        expected = np.stack(
            [rle_decode(labels[row["uwmgi_id"]][n], shape) for n in UWMGI.foreground]
        )
        assert np.array_equal(from_bitmask(bitmask, 3), expected)


def test_volume_scaling_is_shared_by_the_slices_of_a_volume():
    low, high = np.full((40, 40), 100, np.uint16), np.full((40, 40), 1100, np.uint16)
    high[0, 0] = 60000  # one hot voxel does not set the scale
    dark, bright = scale_volume([low, high])
    assert dark.max() == 0 and bright[1:, 1:].min() == 255 and bright.dtype == np.uint8


def test_a_bad_scan_is_named_and_skipped(uwmgi_raw, tmp_path):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(uwmgi_raw, raw)
    broken = next(raw.glob("train/case101/case101_day0/scans/slice_0003_*.png"))
    broken.write_bytes(b"not a png")
    report = UWMGIReader().prepare(raw, tmp_path / "prepared")
    assert [item["file"] for item in report["skipped"]] == [str(broken)]
    assert report["slices"] == 6 * 2 * SLICES_PER_DAY - 1


# ---------------------------------------------------------------------------- multi-label


def test_overlaps_survive_cache_augmentation_and_to_sample(uwmgi_prepared):
    prepared, _ = uwmgi_prepared
    cache = build_cache(prepared, (64, 64), num_classes=1 << 3)
    images, masks, ids = open_cache(cache)
    row = next(i for i in range(len(ids)) if (from_bitmask(masks[i], 3).sum(0) > 1).any())
    channels = from_bitmask(masks[row], 3)
    flip = A.Compose([A.HorizontalFlip(p=1.0)])
    out = flip(image=np.array(images[row]), mask=np.array(masks[row]))
    assert np.array_equal(from_bitmask(out["mask"], 3), channels[:, :, ::-1])
    # A rotation with nearest-neighbour masks moves bits, never mixes them: overlaps stay.
    rotate = A.Compose([A.Affine(rotate=(20, 20), mask_interpolation=0, p=1.0)])
    rotated = rotate(image=np.array(images[row]), mask=np.array(masks[row]))["mask"]
    assert (from_bitmask(rotated, 3).sum(0) > 1).any()
    assert set(np.unique(rotated)) <= set(np.unique(masks[row])) | {0}
    sample = to_sample(out["image"], out["mask"], "x", multilabel_classes=3)
    assert sample["mask"].shape == (3, 64, 64) and sample["mask"].dtype == torch.float32
    assert (sample["mask"].sum(0) > 1).any()


def test_bitmask_round_trip_and_multilabel_scores():
    channels = np.zeros((3, 4, 4), bool)
    channels[0, :2] = channels[1, 1:3] = True  # classes 1 and 2 overlap on row 1
    assert np.array_equal(from_bitmask(to_bitmask(channels), 3), channels)
    target = torch.from_numpy(to_bitmask(channels)[None].astype(np.int64))
    logits = torch.from_numpy(np.where(channels, 5.0, -5.0)[None]).float()
    dice, iou = per_image_scores(logits, target, 4, multilabel=True)
    # Classes 1, 2 found exactly; class 3 absent from both: NaN (the one empty rule).
    assert dice[0, :2].tolist() == [1.0, 1.0] and torch.isnan(dice[0, 2])
    assert torch.isnan(iou[0, 2])


# ---------------------------------------------------------------------------- 2.5D


def test_context_repeats_the_edge_slice_and_stays_in_its_volume():
    rows = pd.DataFrame(
        {
            "image": ["a5", "a1", "a3", "b1", "b2"],
            "case_day": ["a", "a", "a", "b", "b"],
            "slice": [5, 1, 3, 1, 2],
        }
    )
    one = context_ids(rows, "case_day", "slice", 1)
    assert one["a1"] == ["a1", "a1", "a3"]  # slice numbers order, gaps allowed
    assert one["a3"] == ["a1", "a3", "a5"]
    assert one["a5"] == ["a3", "a5", "a5"]
    two = context_ids(rows, "case_day", "slice", 2)
    assert two["b1"] == ["b1", "b1", "b1", "b2", "b2"]


def _datamodule(raw: Path, cache_dir: Path, **options) -> SegmentationDataModule:
    defaults = {
        "num_classes": 3,
        "train_transform": None,
        "image_size": (64, 64),
        "batch_size": 4,
        "num_workers": 0,
        "n_folds": 3,
        "stratify_column": "organs",
        "volume_column": "case_day",
        "slice_column": "slice",
        "splits_out": None,
    }
    return SegmentationDataModule(raw, cache_dir, UWMGIReader(), **(defaults | options))


def test_dataset_stacks_neighbours_as_channels(uwmgi_raw, tmp_path):
    datamodule = _datamodule(uwmgi_raw, tmp_path, context_slices=1, in_channels=3)
    datamodule.prepare_data()
    datamodule.setup()
    dataset = datamodule.dataset("test")
    first = next(i for i, image in enumerate(dataset.ids) if image.endswith("slice_0001.png"))
    second = dataset.ids.index(dataset.ids[first].replace("0001", "0003"))
    edge, inner = dataset[first], dataset[second]
    assert edge["image"].shape == (3, 64, 64) and edge["mask"].shape == (3, 64, 64)
    # At the volume's first slice the missing neighbour is the slice itself ...
    assert torch.equal(edge["image"][0], edge["image"][1])
    # ... and the next slice's first channel is that same first slice.
    assert torch.equal(inner["image"][0], edge["image"][1])
    assert torch.equal(inner["image"][1], edge["image"][2])


def test_wrong_channels_for_the_context_are_named(uwmgi_raw, tmp_path):
    with pytest.raises(ValueError, match="context_slices=1 has 3 input channel"):
        _datamodule(uwmgi_raw, tmp_path, context_slices=1, in_channels=1)


def test_splits_group_cases_and_drop_empty_only_in_training(uwmgi_raw, tmp_path):
    kept = _datamodule(uwmgi_raw, tmp_path)
    dropped = _datamodule(uwmgi_raw, tmp_path, drop_empty=True)
    for datamodule in (kept, dropped):
        datamodule.prepare_data()
        datamodule.setup()
    cases = {s: set(kept.split_rows(s)["subject"]) for s in ("train", "val", "test")}
    assert not (cases["train"] & cases["val"] or cases["train"] & cases["test"])
    assert not cases["val"] & cases["test"]
    # Every day of a case goes with it.
    days = {s: set(kept.split_rows(s)["case_day"]) for s in cases}
    assert sum(len(d) for d in days.values()) == 12
    assert len(dropped.dataset("train")) == len(kept.dataset("train")) - 2 * len(days["train"])
    assert len(dropped.dataset("test")) == len(kept.dataset("test"))


# ---------------------------------------------------------------------------- the score


def test_competition_score_on_a_hand_example():
    truth = np.zeros((2, 4, 4), bool)
    pred = np.zeros((2, 4, 4), bool)
    truth[0, 0, 0] = True
    pred[0, 0, :2] = True
    # Slice 0: Dice 2/3; slice 1: both empty, Dice 0 by the competition's rule; mean 1/3.
    # 3D Hausdorff 1 voxel over the diagonal sqrt(2^2 + 4^2 + 4^2) = 6.
    result = volume_score(pred, truth)
    assert result["dice"] == pytest.approx(1 / 3)
    assert result["hausdorff"] == pytest.approx(1 / 6)
    assert result["score"] == pytest.approx(0.4 / 3 + 0.6 * 5 / 6)
    assert hausdorff_3d(pred[1:], truth[1:]) == 0.0 and hausdorff_3d(pred, truth[1:2]) == 1.0
    both = competition_score({"v": (list(pred[:, None]), list(truth[:, None]))}, ["stomach"])
    assert both["score"] == pytest.approx(result["score"])


# ---------------------------------------------------------------------------- end to end


def _train_overrides(raw: Path, cache_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    # resnet18 instead of the experiment's efficientnet-b7: the same wiring at half the time.
    return [
        "+experiment=uwmgi_unet_effb7_2p5d",
        "data=uwmgi_synthetic",
        f"data.root={raw}",
        "data.synthetic=null",
        f"data.cache_dir={cache_dir}",
        "data.n_folds=3",
        "data.num_workers=0",
        "model.encoder_name=resnet18",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        f"paths.output_dir={output_dir}",
        *extra,
    ]


def test_fast_dev_run_trains_the_experiment(uwmgi_raw, tmp_path):
    overrides = _train_overrides(
        uwmgi_raw, tmp_path / "prepared", tmp_path / "run", "trainer.fast_dev_run=true"
    )
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.data.in_channels == 3 and cfg.model.num_classes == 3
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert set(json.loads((tmp_path / "run" / "summary.json").read_text())["competition"]) >= {
        "score",
        "dice",
        "hausdorff",
    }


@pytest.fixture(scope="module")
def trained(uwmgi_raw, tmp_path_factory) -> tuple[Path, Path]:
    """One epoch of one batch: a checkpoint (fast_dev_run saves none)."""
    base = tmp_path_factory.mktemp("uwmgi-run")
    overrides = _train_overrides(
        uwmgi_raw,
        base / "prepared",
        base / "run",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
    )
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        train(compose("train", overrides=overrides))
    return base / "run" / "checkpoints" / "last.ckpt", base / "prepared"


def test_checkpoint_records_the_output_mode_and_context(trained):
    restored = load_model(trained[0])
    assert restored.multilabel and restored.in_channels == 3
    assert restored.context == {
        "context_slices": 1,
        "volume_column": "case_day",
        "slice_column": "slice",
    }


def test_eval_scores_the_checkpoint_per_organ_and_per_volume(uwmgi_raw, trained, tmp_path):
    ckpt, cache_dir = trained
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={ckpt}",
                "data=uwmgi_synthetic",
                f"data.root={uwmgi_raw}",
                "data.synthetic=null",
                f"data.cache_dir={cache_dir}",
                "data.n_folds=3",
                "data.num_workers=0",
                f"out_dir={tmp_path}",
                f"paths.output_dir={tmp_path}",
            ],
        )
    evaluate_checkpoint(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["per_class"]) == set(UWMGI.foreground)
    assert summary["settings"]["multilabel"] and summary["settings"]["context_slices"] == 1
    competition = summary["competition"]
    assert 0 <= competition["score"] <= 1
    assert competition["case_days"] == len({row["case_day"] for row in summary["per_image"]})


def test_predict_writes_the_competition_submission(uwmgi_raw, trained, tmp_path):
    rows = predict_volume_layout(load_model(trained[0]), uwmgi_raw, tmp_path / "pred")
    with (tmp_path / "pred" / "submission.csv").open() as f:
        table = list(csv.reader(f))
    assert tuple(table[0]) == SUBMISSION_COLUMNS
    assert len(table) - 1 == len(rows) == 6 * 2 * SLICES_PER_DAY * 3
    assert [r[1] for r in table[1:4]] == list(UWMGI.foreground)
    shapes = _shapes(uwmgi_raw)
    for slice_id, _, predicted in table[1:]:
        assert re.fullmatch(r"case\d+_day\d+_slice_\d{4}", slice_id)
        assert re.fullmatch(r"(\d+ \d+( \d+ \d+)*)?", predicted)
        assert rle_encode(rle_decode(predicted, shapes[slice_id])) == predicted
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == 6 * 2 * SLICES_PER_DAY
    with pytest.raises(FileExistsError):
        predict_volume_layout(load_model(trained[0]), uwmgi_raw, tmp_path / "pred")


def test_data_config_channels_follow_the_context():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["data=uwmgi", "data.root=x", "data.context_slices=2"])
    assert cfg.data.in_channels == 5 and cfg.model.in_channels == 5
    assert cfg.data.num_classes == UWMGI.num_outputs == 3
