"""Validation and test under DDP (trainer=ddp_sim: two CPU processes over gloo) count every
image once and score a checkpoint exactly as one process does; DDP works inside a Hydra
multirun; concurrent processes build the prepared copy and cache once; bf16 runs on a CPU.

One 2-job multirun of two-process DDP runs (``ddp_sweep``) serves all the DDP tests."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir

from src.data import cache
from src.train import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_overrides(phantom_raw: Path, tmp_path_factory) -> list[str]:
    """The tiny phantom, fold 1 of 5: 3 val and 3 test images, an odd count, so a padding
    sampler would give one of them to both processes."""
    return [
        f"data.root={phantom_raw}",
        "data.synthetic=null",
        f"data.cache_dir={tmp_path_factory.getbasetemp() / 'ddp-prepared'}",
        "data.image_size=[64,64]",
        "data.n_folds=5",
        "data.fold=1",
        "data.batch_size=2",
        "data.num_workers=0",
        "model.base_channels=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
    ]


@pytest.fixture(scope="module")
def ddp_sweep(data_overrides, tmp_path_factory) -> Path:
    """A 2-job multirun, each job one epoch in two processes (job 0 then tests its best
    checkpoint; job 1 skips the test, to keep this short), as a user runs it (Lightning
    starts the second process of each job by re-running the command). Logs go under the
    sweep's parent, where a stray ``outputs/`` or ``multirun/`` folder would show."""
    base = tmp_path_factory.mktemp("ddp")
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        "+experiment=unet_dice",
        "trainer=ddp_sim",
        *data_overrides,
        "test=true,false",
        f"paths.log_dir={base}",
        f"hydra.sweep.dir={base / 'sweep'}",
    ]
    env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return base / "sweep"


@pytest.fixture(scope="module")
def ddp_run(ddp_sweep) -> Path:
    return ddp_sweep / "0"


def test_ddp_inside_a_multirun_runs_each_job_once_in_its_folder(ddp_sweep):
    # No nested sweep and no stray run folder from the re-launched processes.
    assert sorted(p.name for p in ddp_sweep.parent.iterdir()) == ["sweep"]
    assert sorted(p.name for p in ddp_sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    for job, setting in (("0", "test=true"), ("1", "test=false")):
        # (Hydra records a swept bool as Python writes it: test=True)
        assert setting in (ddp_sweep / job / ".hydra" / "overrides.yaml").read_text().lower()
        assert (ddp_sweep / job / "checkpoints" / "epoch_000.ckpt").is_file()
        assert (ddp_sweep / job / "unet_dice.log").read_text().count("epoch 0/0 | ") == 1
    # Each job ran its own setting (a nested sweep would have run both in each folder).
    assert (ddp_sweep / "0" / "checkpoints" / "summary.json").is_file()
    assert not (ddp_sweep / "1" / "checkpoints" / "summary.json").exists()


def test_ddp_tests_every_image_once(ddp_run):
    summary = json.loads((ddp_run / "checkpoints" / "summary.json").read_text())
    test_ids = json.loads((ddp_run / "splits.json").read_text())["test"]
    assert len(test_ids) % 2 == 1
    assert [row["id"] for row in summary["per_image"]] == test_ids
    assert summary["num_images"] == len(test_ids)
    # The trainer's own test pass (the one that sees the DDP sampler) scored each image once:
    # a padding sampler would score len + 1 (test_a_padding_sampler_would_score_one_twice).
    assert summary["training_resolution"]["num_images"] == len(test_ids)
    assert summary["checkpoint"] == str(ddp_run / "checkpoints" / "epoch_000.ckpt")
    assert summary["training"]["epochs_run"] == 1


def test_ddp_writes_the_run_records_once(ddp_run):
    # The second process re-runs the command in the same folder: it must not add its own.
    assert not list(ddp_run.glob("config_resolved.*.yaml"))
    assert not list(ddp_run.glob(".hydra.*"))
    assert not list((ddp_run / "csv").glob("resumed-*"))
    log = (ddp_run / "unet_dice.log").read_text()
    assert log.count("epoch 0/0 | ") == 1


def test_one_process_scores_the_ddp_checkpoint_the_same(ddp_run, data_overrides, tmp_path):
    # Resuming the finished one-epoch run trains nothing and tests its best checkpoint again,
    # here in one process; the new summary goes beside the first (timestamped).
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "+experiment=unet_dice",
                *data_overrides,
                f"ckpt_path={ddp_run}",
                f"paths.output_dir={tmp_path}",
            ],
        )
    train(cfg)
    ddp = json.loads((ddp_run / "checkpoints" / "summary.json").read_text())
    (single_path,) = (ddp_run / "checkpoints").glob("summary.*.json")
    single = json.loads(single_path.read_text())
    assert single["checkpoint"] == ddp["checkpoint"]
    assert single["per_image"] == ddp["per_image"]
    assert single["mean"] == pytest.approx(ddp["mean"], rel=1e-6)
    assert single["per_class"] == ddp["per_class"]
    # The trainer's own test pass at the training size: torchmetrics states gathered from the
    # two processes give what one process computes.
    ddp_pass, single_pass = ddp["training_resolution"], single["training_resolution"]
    assert ddp_pass["mean"] and single_pass["mean"] == pytest.approx(ddp_pass["mean"], rel=1e-6)
    per_class = {
        (name, metric): [run["per_class"][name][metric] for run in (ddp_pass, single_pass)]
        for name in ddp_pass["per_class"]
        for metric in ddp_pass["per_class"][name]
    }
    for ddp_value, single_value in per_class.values():
        assert single_value == pytest.approx(ddp_value, rel=1e-6, nan_ok=True)


def _prepare_in_child(cfg, start, done_at) -> None:
    """One process of ``test_two_processes_build_the_prepared_copy_and_cache_once``."""
    datamodule = hydra.utils.instantiate(cfg)
    start.wait()
    datamodule.prepare_data()
    done_at.put(time.monotonic())


def test_two_processes_build_the_prepared_copy_and_cache_once(phantom_raw, tmp_path, monkeypatch):
    # Two processes (as two DDP nodes sharing a file system, or a parallel sweep) prepare the
    # same data at the same moment. Each build is slowed down and recorded: one process builds
    # the prepared copy and the cache, the other waits for it and reuses both.
    events = tmp_path / "builds.txt"

    def recorded(kind, build):
        def slow_build(*args, **kwargs):
            result = build(*args, **kwargs)
            time.sleep(0.5)
            with events.open("a") as f:
                f.write(f"{kind} {os.getpid()} {time.monotonic()}\n")
            return result

        return slow_build

    reader_class = type(hydra.utils.instantiate(_data_config(phantom_raw, tmp_path)).reader)
    monkeypatch.setattr(reader_class, "prepare", recorded("prepare", reader_class.prepare))
    monkeypatch.setattr(cache, "_write_arrays", recorded("cache", cache._write_arrays))
    context = multiprocessing.get_context("fork")  # the patches above reach the children
    start, done_at = context.Event(), context.Queue()
    children = [
        context.Process(
            target=_prepare_in_child, args=(_data_config(phantom_raw, tmp_path), start, done_at)
        )
        for _ in range(2)
    ]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    finished = sorted(done_at.get(timeout=5) for _ in children)
    builds = [line.split() for line in events.read_text().splitlines()]
    assert [kind for kind, _, _ in builds] == ["prepare", "cache"]
    assert len({pid for _, pid, _ in builds}) == 1  # the same process built both
    # The other process returned only after the cache was complete: it waited, then reused.
    assert finished[0] >= float(builds[-1][2])
    (cache_dir,) = (p for p in (tmp_path / "prepared").glob("*/cache/*") if p.is_dir())
    assert (cache_dir / cache.IDS_FILE).is_file()


def _data_config(phantom_raw: Path, tmp_path: Path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"data.root={phantom_raw}",
                "data.synthetic=null",
                f"data.cache_dir={tmp_path / 'prepared'}",
                "data.image_size=[32,32]",
                "paths.output_dir=unused",
                "data.splits_out=null",
            ],
        )
    return cfg.data


def test_a_padding_sampler_would_score_one_twice():
    """Why the count above fails by construction under Lightning's default padding sampler:
    with 3 test images over 2 processes it hands out 4 (one image twice), the sampler this
    project uses for val and test hands out 3."""
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DistributedSampler

    images = list(range(3))

    def handed_out(sampler_class) -> list[int]:
        return [i for rank in range(2) for i in sampler_class(images, 2, rank, shuffle=False)]

    assert sorted(handed_out(DistributedSampler)) == [0, 0, 1, 2]
    assert sorted(handed_out(UnrepeatedDistributedSampler)) == [0, 1, 2]
