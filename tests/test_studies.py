"""Optuna studies shared by sweep processes (hydra_plugins/sonoseg/optuna_sweeper.py): one
study filled by two processes at once, a killed search resumed, the report's study table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hydra_plugins.sonoseg.optuna_sweeper import search_space
from src.report import build_report, render_markdown
from src.runs import process_identity, process_is_gone
from src.studies import (
    INTERRUPTED,
    NOT_RUN,
    OWNER,
    open_storage,
    study_trials,
    write_study_record,
)

ROOT = Path(__file__).resolve().parents[1]


def _search(tiny_run, sweep_dir: Path, n_trials: int, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "hparams_search=unet_optuna",
        *tiny_run,
        *extra,
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.sampler.n_startup_trials=10",
        f"hydra.sweeper.storage={sweep_dir / 'study.journal'}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    log_path = sweep_dir.parent / f"{sweep_dir.name}-{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log_path = log_path
    return process


def _trials(sweep_dir: Path) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(str(sweep_dir / "study.journal"))
    return optuna.load_study(study_name="unet_dice", storage=storage).get_trials()


def _finish(process: subprocess.Popen) -> None:
    assert process.wait(timeout=600) == 0, process.log_path.read_text()[-3000:]


def test_two_processes_fill_one_study_with_n_trials(tiny_run, tmp_path):
    sweep_dir = tmp_path / "search"
    sweep_dir.mkdir()
    processes = [_search(tiny_run, sweep_dir, 4, "test=false") for _ in range(2)]
    for process in processes:
        _finish(process)
    trials = _trials(sweep_dir)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    # A trial asked by both at the very end is told failed, marked, and run by neither.
    assert all(NOT_RUN in t.user_attrs for t in trials if t not in complete)
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    # Both processes ran trials, each in the folder of its number.
    owners = {t.user_attrs[OWNER] for t in complete}
    assert len(owners) == 2
    assert {p.pid for p in processes} == {int(o.split(":")[1]) for o in owners}
    for trial in complete:
        assert (sweep_dir / str(trial.number) / "checkpoints").is_dir()


def test_a_killed_search_resumes_and_finishes_all_trials(tiny_run, tmp_path):
    sweep_dir = tmp_path / "search"
    sweep_dir.mkdir()
    first = _search(tiny_run, sweep_dir, n_trials=3)
    deadline = time.monotonic() + 300
    while not (sweep_dir / "1" / ".hydra").is_dir():  # trial 0 told, trial 1 running
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    running = [t.number for t in _trials(sweep_dir) if t.state.name == "RUNNING"]
    assert running == [1]

    _finish(_search(tiny_run, sweep_dir, n_trials=3))
    trials = _trials(sweep_dir)
    assert [(t.number, t.state.name) for t in trials] == [
        (0, "COMPLETE"),
        (1, "FAIL"),
        (2, "COMPLETE"),
        (3, "COMPLETE"),
    ]
    assert "ended before it" in trials[1].user_attrs[INTERRUPTED]
    # The sweep report shows the study beside its table, the interrupted trial named.
    report = render_markdown(build_report([sweep_dir]), "report.png")
    assert "## Optuna study" in report
    assert "| 1 | FAIL |" in report and "ended before it" in report
    assert (sweep_dir / "optimization_results.yaml").is_file()


def test_the_study_table_reads_the_recorded_study(tmp_path):
    storage = tmp_path / "study.journal"
    study = optuna.create_study(study_name="s", storage=open_storage(str(storage)))
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    write_study_record(tmp_path, str(storage), "s")
    table = study_trials(tmp_path)
    assert table[["trial", "state", "value"]].values.tolist() == [[0, "COMPLETE", 0.5]]
    assert table.attrs["study"] == f"s in {storage}"


def test_the_search_space_follows_hydras_sweep_syntax():
    distributions, fixed = search_space(
        [
            "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            "data.batch_size=choice(4, 8)",
            "model.depth=range(2, 5)",
            "trainer.max_epochs=3",
        ]
    )
    lr = distributions["optimizer.lr"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    assert distributions["data.batch_size"].choices == (4, 8)
    assert distributions["model.depth"].choices == (2, 3, 4)
    assert fixed == ["trainer.max_epochs=3"]


def test_only_a_process_of_this_host_that_is_gone_counts_as_gone():
    assert not process_is_gone(process_identity())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_identity(child.pid)
    child.wait()
    assert process_is_gone(owner)
    assert not process_is_gone("another-host:1:0")


@pytest.mark.parametrize("storage", ["sqlite:///{tmp}/s.db", "{tmp}/s.journal"])
def test_both_kinds_of_storage_keep_a_study(tmp_path, storage):
    url = storage.format(tmp=tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    study.tell(study.ask(), 1.0)
    again = optuna.load_study(study_name="s", storage=open_storage(url))
    assert [t.value for t in again.get_trials()] == [1.0]
