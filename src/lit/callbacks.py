"""Callbacks for what Lightning's own do not do, and the lookup of its best checkpoint."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import psutil
import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback
from pytorch_lightning.callbacks import ModelCheckpoint

from src.evaluation.records import format_score

log = logging.getLogger(__name__)


def best_checkpoint_callback(trainer: pl.Trainer, monitor: str) -> ModelCheckpoint | None:
    """The checkpoint callback keeping the best ``monitor`` (last.ckpt's monitors nothing)."""
    return next((c for c in trainer.checkpoint_callbacks if c.monitor == monitor), None)


class TrainingLog(Callback):
    """One log line per epoch, and the training record written into summary.json.

    The rich progress bar draws only on a terminal; a run whose output goes to a file (or its
    ``<task>.log``) would show nothing for the whole fit. Each epoch logs, through the python
    logger (so it lands in the run's log file and on stdout): the train loss, the per-class
    metrics under ``per_class_prefix``, the best ``monitor`` so far and the epoch's time. The
    end of fit logs the best epoch's score beside the last epoch's.

    The best value is tracked here with ModelCheckpoint's rule (strictly better, NaN never
    best) because ModelCheckpoint does not record its best epoch. It is kept in checkpoints,
    so a resumed run knows the best so far; epoch times count this run's epochs only.
    """

    def __init__(
        self,
        monitor: str,
        mode: str,
        train_loss: str = "train/loss_epoch",
        per_class_prefix: str = "val/dice_",
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"TrainingLog: mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.train_loss = train_loss
        self.per_class_prefix = per_class_prefix
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.last_score: float | None = None
        self.last_epoch: int | None = None
        self.epoch_seconds: list[float] = []
        self.num_parameters = 0
        self._epoch_started = 0.0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.num_parameters = sum(p.numel() for p in pl_module.parameters())
        self.epoch_seconds = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here rather than at the epoch's end: Lightning runs checkpoint callbacks last, so the
        # checkpoint saved after this validation holds this epoch's best in our state.
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        self.last_score = score
        if self._improves(score):
            self.best_score, self.best_epoch = score, trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_started)
        self.last_epoch = trainer.current_epoch
        if trainer.is_global_zero:
            log.info(self._epoch_line(trainer))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.last_epoch is not None:
            log.info(
                f"fit done: best {self.monitor} {format_score(self.best_score)} at epoch "
                f"{self.best_epoch}; last epoch {self.last_epoch}: {format_score(self.last_score)}"
            )

    def record(self) -> dict[str, Any]:
        """The ``training`` block of summary.json (a report tool reads exactly these keys)."""
        return {
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "monitor": self.monitor,
            "last_epoch": self.last_epoch,
            "epochs_run": len(self.epoch_seconds),
            "seconds_per_epoch": (
                sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else None
            ),
            "num_parameters": self.num_parameters,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "last_score": self.last_score,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score, self.best_epoch = state_dict["best_score"], state_dict["best_epoch"]
        self.last_score, self.last_epoch = state_dict["last_score"], state_dict["last_epoch"]

    def _improves(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score

    def _epoch_line(self, trainer: pl.Trainer) -> str:
        metrics = trainer.callback_metrics
        # 0-based, as in the checkpoint names (epoch_000.ckpt): "epoch 3/44" is the 4th of 45.
        last = f"/{trainer.max_epochs - 1}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"epoch {trainer.current_epoch}{last}"]
        if self.train_loss in metrics:
            parts.append(f"{self.train_loss} {format_score(float(metrics[self.train_loss]))}")
        per_class = {
            key.removeprefix(self.per_class_prefix): float(value)
            for key, value in metrics.items()
            if key.startswith(self.per_class_prefix)
        }
        if per_class:
            values = " ".join(f"{name} {format_score(value)}" for name, value in per_class.items())
            parts.append(f"{self.per_class_prefix.rstrip('_')} {values}")
        if self.best_epoch is not None:
            parts.append(
                f"best {self.monitor} {format_score(self.best_score)} (epoch {self.best_epoch})"
            )
        parts.append(f"{self.epoch_seconds[-1]:.1f} s")
        return " | ".join(parts)


class CpuThreads(Callback):
    """torch's intra-op threads set to the CPU cores other processes leave free, re-checked
    every ``every_n_steps`` training steps (None: once, at the start of fitting).

    Why: torch's OpenMP threads spin while they wait for each other. Two processes each
    running one thread per core on the same cores (a sweep run side by side, the viewer
    beside a training) keep waiting on threads the other has descheduled: each ran 4.3x
    slower instead of 2x (BENCHMARKS.md, ``src.bench --share``). With as many threads as
    free cores, both settle at one thread each, with no slowdown beyond the shared cores;
    when the other process ends, the threads come back. Lightning and torch have no such
    setting. Other processes' load is the machine's busy CPU time minus this process
    tree's (loader workers included) over the last interval. Only for CPU training; the
    thread count changes float rounding, so a run that must repeat bit for bit under
    changing load sets ``threads`` to a number.
    """

    def __init__(self, threads: int | str = "auto", every_n_steps: int | None = 50) -> None:
        if threads != "auto" and not (isinstance(threads, int) and threads >= 1):
            raise ValueError(f"callbacks.cpu_threads.threads: {threads!r} (expected auto or >= 1)")
        self.threads = threads
        self.every_n_steps = every_n_steps
        self.cores = psutil.cpu_count(logical=True) or 1
        self._active = False
        self._last: tuple[float, float, float] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = trainer.strategy.root_device.type == "cpu"
        if not self._active:
            return
        if self.threads != "auto":
            self._set(int(self.threads))
            return
        self._last = self._sample()
        time.sleep(0.5)  # a first interval to measure the others' load on
        self._adjust()

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        checks = self._active and self.threads == "auto" and self.every_n_steps
        if checks and step > 0 and step % self.every_n_steps == 0:
            self._adjust()

    def _sample(self) -> tuple[float, float, float]:
        """(wall clock, busy CPU seconds of the machine, CPU seconds of this process tree)."""
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        own = 0.0
        me = psutil.Process()
        for process in (me, *me.children(recursive=True)):
            try:
                times = process.cpu_times()
            except psutil.Error:  # a worker that ended meanwhile
                continue
            own += times.user + times.system
        return time.monotonic(), busy, own

    def _adjust(self) -> None:
        now = self._sample()
        wall, busy, own = (b - a for a, b in zip(self._last, now, strict=True))
        self._last = now
        if wall <= 0:
            return
        # A process tree's counter restarts when a worker ends: never below zero.
        others = max(0.0, (busy - max(own, 0.0)) / wall)
        self._set(free_threads(self.cores, others))

    def _set(self, threads: int) -> None:
        if threads != torch.get_num_threads():
            log.info("CPU threads: %d -> %d", torch.get_num_threads(), threads)
            torch.set_num_threads(threads)


def free_threads(cores: int, others_busy: float) -> int:
    """Threads for the cores that processes other than ours keep busy ``others_busy`` of
    (in cores, averaged): the rest, rounded, at least one."""
    return max(1, min(cores, round(cores - others_busy)))
