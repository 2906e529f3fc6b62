"""src.runs: the run folder's layout, its records written without replacing earlier ones, and
a job's status read back from what it left."""

from __future__ import annotations

import json
import math

import pytest

from src import runs


def test_the_layout_of_a_run_folder(tmp_path):
    ckpt = runs.checkpoints_dir(tmp_path) / "epoch_003.ckpt"
    assert runs.run_dir_of(ckpt) == tmp_path
    assert runs.run_summary_path(tmp_path) == tmp_path / "checkpoints" / "summary.json"
    assert runs.summary_path(ckpt.parent) == runs.run_summary_path(tmp_path)
    assert runs.per_image_path(ckpt.parent) == tmp_path / "checkpoints" / "per_image.csv"
    assert runs.splits_path(runs.run_dir_of(ckpt)) == tmp_path / "splits.json"
    assert runs.resolved_config_path(tmp_path) == tmp_path / "config_resolved.yaml"
    assert runs.overrides_path(tmp_path) == tmp_path / ".hydra" / "overrides.yaml"
    assert runs.metrics_csv_path(tmp_path) == tmp_path / "csv" / "metrics.csv"
    assert runs.last_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.ckpt"


def test_a_second_summary_is_timestamped_and_nan_written_as_null(tmp_path):
    first = runs.write_summary({"classes": ["brain"], "mean": {"dice_mean": math.nan}}, tmp_path)
    second = runs.write_summary({"classes": ["brain"], "mean": {}}, tmp_path)
    assert first == tmp_path / "summary.json" and second != first
    assert second.name.startswith("summary.") and second.suffix == ".json"
    assert json.loads(first.read_text())["mean"] == {"dice_mean": None}
    with pytest.raises(ValueError, match=r"summary\.json: no 'per_class' key"):
        runs.read_summary(first)


def test_a_run_folder_resolves_to_the_best_checkpoint_named_in_its_summary(tmp_path):
    runs.checkpoints_dir(tmp_path).mkdir()
    runs.write_summary({"checkpoint": "/moved/away/epoch_007.ckpt"}, runs.checkpoints_dir(tmp_path))
    best = runs.checkpoints_dir(tmp_path) / "epoch_007.ckpt"
    assert runs.resolve_run_checkpoint(tmp_path) == best
    assert runs.resolve_run_checkpoint(best) == best
    with pytest.raises(FileNotFoundError, match="names its best checkpoint"):
        runs.resolve_run_checkpoint(tmp_path / "checkpoints")


def test_a_job_is_finished_failed_or_unfinished(tmp_path):
    jobs = {name: tmp_path / name for name in ("0", "1", "2", "3")}
    runs.checkpoints_dir(jobs["0"]).mkdir(parents=True)
    runs.run_summary_path(jobs["0"]).write_text("{}")
    runs.write_failed_marker(jobs["1"], RuntimeError("out of memory"), "loss=ce")
    jobs["2"].mkdir()
    (jobs["2"] / "train.log").write_text(f"... {runs.FAILED_LOG_LINE}\n")
    jobs["3"].mkdir()
    assert {name: runs.job_status(job) for name, job in jobs.items()} == {
        "0": "finished",
        "1": "failed",
        "2": "failed",
        "3": "unfinished",
    }
    assert runs.failed_jobs(tmp_path) == {
        jobs["1"]: "overrides: loss=ce\nerror: RuntimeError: out of memory"
    }


def test_keep_existing_never_names_an_existing_file(tmp_path):
    path = tmp_path / "config_resolved.yaml"
    assert runs.keep_existing(path) == path
    path.touch()
    stamped = runs.keep_existing(path)
    stamped.touch()
    assert len({path, stamped, runs.keep_existing(path)}) == 3
