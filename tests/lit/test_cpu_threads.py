"""``CpuThreads``: torch's threads follow the cores other processes leave free."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from src.lit.callbacks import CpuThreads, free_threads


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def cpu_trainer(step: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cpu")), global_step=step
    )


def test_free_threads_rounds_the_free_cores_and_keeps_one():
    assert free_threads(2, 0.0) == 2
    assert free_threads(2, 0.4) == 2
    assert free_threads(2, 1.0) == 1
    assert free_threads(2, 2.0) == 1  # everything busy: still one thread
    assert free_threads(8, 2.6) == 5


def test_threads_follow_the_other_processes_load(monkeypatch):
    """Measured samples (wall, machine busy, own): another process busy on one of 2 cores,
    then on none; the callback re-checks every 2 steps."""
    samples = iter(
        [
            (0.0, 0.0, 0.0),
            (1.0, 1.2, 0.2),  # others: 1.0 core of 2 -> 1 thread
            (2.0, 3.2, 1.2),  # step 2: others 1.0 -> still 1
            (3.0, 4.2, 2.2),  # step 4: others 0.0 -> 2 threads
        ]
    )
    callback = CpuThreads(threads="auto", every_n_steps=2)
    callback.cores = 2
    monkeypatch.setattr(callback, "_sample", lambda: next(samples))
    monkeypatch.setattr("src.lit.callbacks.time.sleep", lambda seconds: None)
    callback.on_fit_start(cpu_trainer(), None)
    assert torch.get_num_threads() == 1
    callback.on_train_batch_start(cpu_trainer(step=1), None, None, 1)  # not a check step
    callback.on_train_batch_start(cpu_trainer(step=2), None, None, 2)
    assert torch.get_num_threads() == 1
    callback.on_train_batch_start(cpu_trainer(step=4), None, None, 4)
    assert torch.get_num_threads() == 2


def test_a_fixed_count_and_the_measured_machine():
    CpuThreads(threads=1).on_fit_start(cpu_trainer(), None)
    assert torch.get_num_threads() == 1
    callback = CpuThreads(threads="auto", every_n_steps=None)
    callback.on_fit_start(cpu_trainer(), None)  # this machine's real load
    assert 1 <= torch.get_num_threads() <= callback.cores
    with pytest.raises(ValueError, match="cpu_threads.threads"):
        CpuThreads(threads=0)
