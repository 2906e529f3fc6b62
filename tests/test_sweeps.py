"""Hydra sweeps as users run them: a grid of settings, a failing job, W&B per job, Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from src.report import build_report
from src.runs import FAILED_MARKER

ROOT = Path(__file__).resolve().parents[1]


def sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "src.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_a_2x2_sweep_gives_a_4_row_report_and_one_wandb_run_per_job(tiny_run, tmp_path):
    done = sweep(tmp_path, *tiny_run, "loss=dice,ce", "augmentation=none,basic", "logger=wandb")
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    report = build_report([tmp_path])
    assert len(report.table) == 4
    for job in jobs:
        # Each job its own offline W&B run, grouped by the sweep, tagged with what it varied.
        (run,) = job.glob("wandb/offline-run-*")
        record = next(run.glob("run-*.wandb")).read_bytes()
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        loss = "loss=ce" if "loss=ce" in overrides else "loss=dice"
        assert loss.encode() in record
        assert tmp_path.name.encode() in record  # the sweep's group


def test_a_failing_job_is_named_and_does_not_stop_the_sweep(tiny_run, tmp_path):
    # Two output classes for four labels: job 0 fails in its first step; job 1 must still run.
    done = sweep(tmp_path, *tiny_run, "model.num_classes=2,4")
    assert done.returncode == 1
    failed, finished = tmp_path / "0", tmp_path / "1"
    marker = (failed / FAILED_MARKER).read_text()
    assert "model.num_classes=2" in marker and "Class values must be smaller" in marker
    assert (finished / "checkpoints" / "summary.json").is_file()
    assert not (finished / FAILED_MARKER).exists()
    assert "job 0 failed" in done.stdout + done.stderr
    report = build_report([tmp_path])
    assert len(report.table) == 1
    assert [job.path for job in report.jobs if job.status == "failed"] == [failed]


def test_an_optuna_search_maximises_the_optimized_metric(tiny_run, tmp_path):
    done = sweep(
        tmp_path,
        "hparams_search=unet_optuna",
        *tiny_run,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("*/checkpoints/summary.json")]
    assert len(summaries) == 2
    # The sweeper was given each trial's best validation score and kept the larger one.
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    best_scores = [s["training"]["best_score"] for s in summaries]
    assert results["best_value"] == pytest.approx(max(best_scores))
