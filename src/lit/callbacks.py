"""Callbacks for what Lightning's own do not do, and the lookup of its best checkpoint."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl
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
