"""``python -m src.eval``: a checkpoint evaluated at the original size with its run folder
gone; the records it writes and never overwrites."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.eval import evaluate_checkpoint
from src.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_overrides(phantom_raw: Path, tmp_path_factory) -> list[str]:
    cache = tmp_path_factory.getbasetemp() / "eval-prepared"
    return [f"data.root={phantom_raw}", "data.synthetic=null", f"data.cache_dir={cache}"]


@pytest.fixture(scope="module")
def lone_checkpoint(tiny_trained_run, tmp_path_factory) -> Path:
    """A one-batch training run's best checkpoint, copied alone into an empty folder."""
    (best,) = (tiny_trained_run / "checkpoints").glob("epoch_*.ckpt")
    return Path(shutil.copy(best, tmp_path_factory.mktemp("lone") / "model.ckpt"))


@pytest.fixture(scope="module")
def evaluated(lone_checkpoint, data_overrides) -> Path:
    """``python -m src.eval`` as a user runs it, with flip TTA; records in out_dir."""
    out_dir = lone_checkpoint.parent / "eval"
    cmd = [
        sys.executable,
        "-m",
        "src.eval",
        f"ckpt_path={lone_checkpoint}",
        *data_overrides,
        "data.num_workers=0",
        "tta=true",
        f"out_dir={out_dir}",
        f"hydra.run.dir={lone_checkpoint.parent / 'hydra'}",
    ]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "HD95" in done.stdout and "brain" in done.stdout  # the printed table
    return out_dir


def test_eval_command_scores_a_lone_checkpoint_at_the_original_size(evaluated, lone_checkpoint):
    summary = json.loads((evaluated / "summary.json").read_text())
    for key in ("checkpoint", "num_images", "classes", "empty_mask_rule", "mean", "per_class"):
        assert key in summary
    assert summary["checkpoint"] == str(lone_checkpoint)
    assert summary["classes"] == ["brain", "csp", "lv"]
    assert summary["settings"]["tta_flip"] is True
    assert summary["postprocess"]["mode"] == "auto"
    assert "val" in summary["postprocess"]["decided_on"]
    assert summary["training"] is None  # not trained here
    brain = summary["per_class"]["brain"]
    assert {"dice", "iou", "hd95_px", "assd_px", "hd95_mm", "assd_mm", "counts"} <= set(brain)
    # Every image is counted in exactly one case per class: nothing drops out silently.
    assert all(
        sum(scores["counts"].values()) == summary["num_images"]
        for scores in summary["per_class"].values()
    )
    per_plane = summary["per_stratum"]
    assert per_plane["column"] == "plane"
    assert sum(p["num_images"] for p in per_plane["groups"].values()) == summary["num_images"]
    assert "mm" in summary["biometry"]
    with (evaluated / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["id"] for row in rows] == [row["id"] for row in summary["per_image"]]
    assert {"plane", "subject", "pixel_size_mm", "dice_brain", "hd95_mm_lv", "hc_true"} <= set(
        rows[0]
    )
    assert {"hc_pred", "hc_diff", "check_true", "quality_score", "flagged"} <= set(rows[0])
    # The quality flag: its threshold calibrated on the val images, its figures on the test.
    quality = summary["quality"]
    assert "val" in quality["calibrated_on"] and quality["images"] == summary["num_images"]
    scores = [float(row["quality_score"] or "nan") for row in rows]
    measured = [s for s in scores if not math.isnan(s)]
    if quality["threshold"] is not None and measured:
        flagged = sum(s > quality["threshold"] for s in measured)
        assert quality["flagged"] == flagged == sum(row["flagged"] == "True" for row in rows)
    # The first phantom images are at their original 96 x 66 size.
    assert (rows[0]["orig_width"], rows[0]["orig_height"]) == ("96", "66")


def test_a_second_evaluation_keeps_the_first_records(evaluated, lone_checkpoint, data_overrides):
    first = (evaluated / "summary.json").read_text()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={lone_checkpoint}",
                *data_overrides,
                "data.num_workers=0",
                "postprocess=none",
                "split=val",
                f"out_dir={evaluated}",
                f"paths.output_dir={evaluated}",
            ],
        )
    evaluate_checkpoint(cfg)
    assert (evaluated / "summary.json").read_text() == first
    (second,) = evaluated.glob("summary.*.json")
    assert json.loads(second.read_text())["split"] == "val"
    assert len(list(evaluated.glob("per_image.*.csv"))) == 1


def test_a_bad_split_is_named(lone_checkpoint, data_overrides, tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={lone_checkpoint}",
                *data_overrides,
                "split=holdout",
                f"paths.output_dir={tmp_path}",
            ],
        )
    with pytest.raises(SystemExit):
        evaluate_checkpoint(cfg)


@pytest.fixture(scope="module")
def checkpoint_at_32x48(tiny_run, tmp_path_factory) -> Path:
    """``tiny_run`` trained at 32 x 48 instead of 64 x 64: its best checkpoint, alone."""
    run_dir = tmp_path_factory.mktemp("run-32x48")
    overrides = [*tiny_run, "data.image_size=[32,48]", "test=false", f"paths.output_dir={run_dir}"]
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        train(compose("train", overrides))
    torch.use_deterministic_algorithms(was_deterministic)
    (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    return Path(shutil.copy(best, tmp_path_factory.mktemp("lone-32x48") / "model.ckpt"))


def test_the_checkpoints_input_size_is_used_and_no_cache_is_built(
    checkpoint_at_32x48, phantom_raw, tmp_path
):
    """data.image_size=[64,64] on the command line changes nothing: the network gets the
    32 x 48 inputs it was trained on, the config is left as given, and the images are read
    from the prepared copy (no array cache at 64 x 64, nor at any size)."""
    cache_dir = tmp_path / "prepared"

    def evaluate_into(out_dir: Path, *extra: str) -> tuple[DictConfig, list[str]]:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "eval",
                overrides=[
                    f"ckpt_path={checkpoint_at_32x48}",
                    f"data.root={phantom_raw}",
                    "data.synthetic=null",
                    f"data.cache_dir={cache_dir}",
                    "data.num_workers=0",
                    f"out_dir={out_dir}",
                    f"paths.output_dir={out_dir}",
                    *extra,
                ],
            )
        evaluate_checkpoint(cfg)
        return cfg, [(out_dir / name).read_text() for name in ("summary.json", "per_image.csv")]

    _, normal = evaluate_into(tmp_path / "normal")
    cfg, at_64 = evaluate_into(tmp_path / "at-64", "data.image_size=[64,64]")
    assert list(cfg.data.image_size) == [64, 64]
    assert len(list(cache_dir.glob("*/index.csv"))) == 1  # the prepared copy, read as it is
    assert list(cache_dir.rglob("64x64*")) == [] and list(cache_dir.rglob("cache")) == []
    assert at_64 == normal
    assert json.loads(at_64[0])["settings"]["model_input_size"] == [32, 48]


def test_external_validation_scores_every_scan_of_another_copy(tiny_trained_run, tmp_path, caplog):
    """A checkpoint still in its run folder, evaluated on another record (more subjects, other
    scans) with split=all: the run's split is not forced on it, every scan of the copy is
    scored, and nothing is decided on the scored images (no summary.json beside this
    checkpoint: no post-processing, no quality threshold, nothing flagged)."""
    from src.synthetic.record import write_phantom_record

    other = write_phantom_record(
        tmp_path / "other",
        n_subjects=10,
        size=(96, 66),
        seed=1,  # conftest's phantom: 8 subjects
    )
    run = shutil.copytree(tiny_trained_run, tmp_path / "run")  # the fixture stays read-only
    (checkpoint,) = (run / "checkpoints").glob("epoch_*.ckpt")
    cache_dir, out_dir = tmp_path / "prepared", tmp_path / "external"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"ckpt_path={checkpoint}",
                f"data.root={other}",
                "data.synthetic=null",
                f"data.cache_dir={cache_dir}",
                "data.num_workers=0",
                "split=all",
                f"out_dir={out_dir}",
                f"paths.output_dir={out_dir}",
            ],
        )
    with caplog.at_level("INFO"):
        evaluate_checkpoint(cfg)
    (index,) = cache_dir.glob("*/index.csv")
    with index.open() as f:
        ids = {row["image"] for row in csv.DictReader(f)}
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["num_images"] == len(ids) > 19  # more than the training record's 19
    assert summary["split_origin"]["from"].startswith("recomputed: other data")
    assert {row["id"] for row in summary["per_image"]} == ids
    assert summary["postprocess"]["rules"] == {}
    assert "decided_on" not in summary["postprocess"]


def _eval_config(checkpoint: Path, data_root: Path, cache_dir: Path, out_dir: Path, split: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "eval",
            overrides=[
                f"ckpt_path={checkpoint}",
                f"data.root={data_root}",
                "data.synthetic=null",
                f"data.cache_dir={cache_dir}",
                "data.num_workers=0",
                f"split={split}",
                f"out_dir={out_dir}",
                f"paths.output_dir={out_dir}",
            ],
        )


def test_a_copied_checkpoint_scores_exactly_its_own_test_images(
    tiny_run, phantom_raw, tmp_path_factory, tmp_path
):
    """Trained with data.fold=1, copied out of its run folder, evaluated with the config's
    default fold 0: the test images scored are the checkpoint's own (fold 1's), never images
    it was trained on; summary.json says where the split came from."""
    run_dir = tmp_path / "run"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        train(
            compose(
                "train", [*tiny_run, "data.fold=1", "test=false", f"paths.output_dir={run_dir}"]
            )
        )
    trained_split = json.loads((run_dir / "splits.json").read_text())
    (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    lone = Path(shutil.copy(best, tmp_path_factory.mktemp("copied") / "model.ckpt"))
    shutil.rmtree(run_dir)  # no run folder, no splits.json: only the checkpoint knows

    out_dir = tmp_path / "eval"
    cache = tmp_path_factory.getbasetemp() / "eval-prepared"
    evaluate_checkpoint(_eval_config(lone, phantom_raw, cache, out_dir, "test"))
    summary = json.loads((out_dir / "summary.json").read_text())
    scored = {row["id"] for row in summary["per_image"]}
    assert scored == set(trained_split["test"])
    assert not scored & set(trained_split["train"])
    origin = summary["split_origin"]
    assert (origin["from"], origin["fold"], origin["seed"]) == ("checkpoint", 1, 0)
    assert len(origin["data_fingerprint"]) == 16


def test_test_or_val_split_of_other_data_is_refused(tiny_trained_run, tmp_path, caplog):
    from src.synthetic.record import write_phantom_record

    other = write_phantom_record(tmp_path / "other", n_subjects=10, size=(96, 66), seed=1)
    (checkpoint,) = (tiny_trained_run / "checkpoints").glob("epoch_*.ckpt")
    cfg = _eval_config(checkpoint, other, tmp_path / "prepared", tmp_path / "out", "test")
    with pytest.raises(SystemExit):
        evaluate_checkpoint(cfg)
    assert "is not the data epoch_" in caplog.text and "Use split=all" in caplog.text
    assert not (tmp_path / "out" / "summary.json").exists()


def test_re_evaluation_uses_the_checkpoints_own_settings(tiny_run, phantom_raw, tmp_path):
    """A run tested after training with flips: src.eval with its defaults flips too (the
    checkpoint's summary.json says so) and gives the same per-image scores."""
    run_dir = tmp_path / "run"
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        train(compose("train", [*tiny_run, "eval.tta=true", f"paths.output_dir={run_dir}"]))
    (best,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    after_training = json.loads((run_dir / "checkpoints" / "summary.json").read_text())
    out_dir = tmp_path / "again"
    cfg = _eval_config(best, phantom_raw, tmp_path / "prepared", out_dir, "test")
    assert cfg.tta is None
    evaluate_checkpoint(cfg)
    again = json.loads((out_dir / "summary.json").read_text())
    assert again["settings"]["tta_flip"] is True

    def dice(summary: dict) -> dict:
        return {row["id"]: row["dice_brain"] for row in summary["per_image"]}

    assert dice(again) == pytest.approx(dice(after_training), nan_ok=True)
