"""The LightningModule: a thin wrapper that wires a network, a loss and the metrics."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from src.data.splits import SPLIT_RECORD_KEY
from src.inference.checkpoint import PAYLOAD_KEY, checkpoint_payload
from src.metrics import SegmentationMetrics, decide


class SegmentationModule(pl.LightningModule):
    """Trains any ``net(x) -> logits (B, C, H, W)`` with any ``loss(logits, target)``.

    Logs ``train/loss``, ``val/loss``, ``{val,test}/dice_<class>``, ``*/dice_mean`` and the
    IoU counterparts. Per-image test values are kept (with image ids) for ``summary.json``.
    Under DDP every logged value covers all processes: losses are reduced by Lightning
    (``sync_dist``), the metrics by torchmetrics. ``scheduler_monitor`` is the metric a
    scheduler such as ReduceLROnPlateau steps on (the run's ``optimized_metric``).

    ``denoiser``: a learned denoising pre-stage run on the batch before ``net``: frozen
    (no gradient, kept in eval mode: the two-stage set-up) or, with ``denoiser_trainable``,
    trained jointly with it. ``denoiser_config`` is what rebuilds the pre-stage at eval and
    predict time (``checkpoint["sonoseg"]["denoiser"]``): this network's config, or that of a
    classical filter, which the data pipeline applies and which has no module here.

    ``multilabel``: sigmoid outputs, one per foreground class, scored by threshold
    (``src.metrics.decide``); the masks are then (B, K, H, W). ``context``: the 2.5D input
    (``context_slices``, ``volume_column``, ``slice_column``), recorded for eval and predict.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., object] | None,
        class_names: Sequence[str],
        scheduler_monitor: str,
        model_config: Mapping,
        image_size: Sequence[int],
        in_channels: int,
        denoiser: nn.Module | None = None,
        denoiser_trainable: bool = False,
        denoiser_config: Mapping | None = None,
        multilabel: bool = False,
        context: Mapping | None = None,
    ) -> None:
        super().__init__()
        # Modules and optimizer partials stay out of the checkpoint's hparams (the run's
        # resolved config records them), so checkpoints load with torch's weights_only.
        # What rebuilds the network goes into checkpoint["sonoseg"] (on_save_checkpoint).
        self.save_hyperparameters(
            ignore=[
                "net",
                "loss",
                "optimizer",
                "scheduler",
                "model_config",
                "image_size",
                "in_channels",
                "denoiser",
                "denoiser_config",
            ],
            logger=False,
        )
        self.checkpoint_payload = checkpoint_payload(
            model_config,
            class_names,
            image_size,
            in_channels,
            denoiser=denoiser_config,
            multilabel=multilabel,
            context=context,
        )
        self.multilabel = multilabel
        self.denoiser = denoiser
        self.denoiser_trainable = denoiser_trainable
        if denoiser is not None and not denoiser_trainable:
            denoiser.requires_grad_(False).eval()
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_metrics = SegmentationMetrics(list(class_names), multilabel)
        self.test_metrics = SegmentationMetrics(list(class_names), multilabel)
        self.test_ids: list[str] = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every checkpoint carries its resolved model config, class names and input size,
        so ``src.inference.checkpoint.load_model`` rebuilds the network without the run, and
        the split it was trained on with the data's fingerprint, so that ``src.eval`` scores
        its own test images wherever the file is copied."""
        checkpoint[PAYLOAD_KEY] = self.checkpoint_payload
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        record = datamodule.split_record() if hasattr(datamodule, "split_record") else None
        if record is not None:
            checkpoint[SPLIT_RECORD_KEY] = record

    def train(self, mode: bool = True) -> SegmentationModule:
        """A frozen denoiser stays in eval mode (batch-norm statistics and dropout as it was
        trained) whatever mode Lightning switches the module to."""
        super().train(mode)
        if self.denoiser is not None and not self.denoiser_trainable:
            self.denoiser.eval()
        return self

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.denoiser is not None:
            image = self.denoiser(image)
        return self.net(image)

    def _loss_and_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch["image"])
        return self.loss(logits, batch["mask"]), logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_and_logits(batch)
        return log_training_loss(self, loss, len(batch["image"]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, logits = self._loss_and_logits(batch)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch["image"]), sync_dist=True)
        self.val_metrics.update(decide(logits, self.multilabel), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        self.test_ids.clear()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss, logits = self._loss_and_logits(batch)
        self.log("test/loss", loss, on_epoch=True, batch_size=len(batch["image"]), sync_dist=True)
        self.test_metrics.update(decide(logits, self.multilabel), batch["mask"])
        self.test_ids.extend(batch["id"])

    def on_test_epoch_end(self) -> None:
        # Read by the entry point for summary.json before the states are reset.
        self.test_summary = {
            "metrics": {k: float(v) for k, v in self.test_metrics.compute().items()},
            "per_image": [
                {"id": image_id, **values}
                for image_id, values in zip(
                    gathered_ids(self.trainer, self.test_ids),
                    self.test_metrics.per_image(),
                    strict=True,
                )
            ],
        }
        self._log_metrics("test", self.test_metrics)

    def _log_metrics(self, stage: str, metrics: SegmentationMetrics) -> None:
        values = metrics.compute()  # already over all processes: torchmetrics syncs its states
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "dice_mean", sync_dist=False)
        metrics.reset()

    def configure_optimizers(self) -> dict:
        return optimizers_config(
            self, self.optimizer_factory, self.scheduler_factory, self.hparams.scheduler_monitor
        )


def log_training_loss(
    module: pl.LightningModule, loss: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``train/loss`` per step and per epoch (averaged over all processes under DDP), as every
    module of this project logs it; returns ``loss`` for ``training_step``."""
    module.log(
        "train/loss",
        loss,
        on_step=True,
        on_epoch=True,
        prog_bar=True,
        batch_size=batch_size,
        sync_dist=True,
    )
    return loss


def gathered_ids(trainer: pl.Trainer, ids: list[str]) -> list[str]:
    """Image ids in the order a metric's per-image rows are gathered: process by process
    under DDP (torchmetrics concatenates the states in rank order)."""
    if trainer.world_size == 1:
        return list(ids)
    parts: list[list[str]] = [[] for _ in range(trainer.world_size)]
    torch.distributed.all_gather_object(parts, ids)
    return [image_id for part in parts for image_id in part]


def optimizers_config(
    module: pl.LightningModule,
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., object] | None,
    monitor: str,
) -> dict:
    """The optimizer over the module's trainable parameters (a frozen denoiser's stay out)
    and, if given, the epoch-wise scheduler stepping on ``monitor``."""
    built = optimizer(params=[p for p in module.parameters() if p.requires_grad])
    if scheduler is None:
        return {"optimizer": built}
    return {
        "optimizer": built,
        "lr_scheduler": {
            "scheduler": scheduler(optimizer=built),
            "monitor": monitor,
            "interval": "epoch",
        },
    }
