"""Denoiser training in Lightning: a thin module (network, loss, PSNR/SSIM) and a data module
over a pair source (``src.denoise.pairs``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from src.denoise.metrics import DenoisingQuality
from src.inference.checkpoint import DENOISER_PAYLOAD_KEY, denoiser_payload
from src.lit.segmentation import gathered_ids, log_training_loss, optimizers_config

_LOSS_PREFIX = "loss."  # the module keeps its loss as ``self.loss``


class DenoisingModule(pl.LightningModule):
    """Trains any ``net(noisy) -> denoised`` with any ``loss(denoised, clean)``.

    Logs ``train/loss``, ``val/loss`` and ``{val,test}/psnr``, ``ssim`` (and ``psnr_input``,
    ``ssim_input``: the noisy input's, for reference); per-image test values are kept (with
    ids) for summary.json. Checkpoints carry ``checkpoint["sonoseg_denoiser"]`` (the resolved
    network config), so ``load_denoiser`` rebuilds the network from the file alone. A frozen
    network inside the loss (VGG16, a segmenter) is left out of checkpoints: it is rebuilt
    from its own file."""

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None,
        scheduler: Callable[..., object] | None,
        scheduler_monitor: str,
        model_config: Mapping,
        image_size: Sequence[int],
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["net", "loss", "optimizer", "scheduler", "model_config", "image_size"],
            logger=False,
        )
        self.checkpoint_payload = denoiser_payload(model_config, image_size)
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_quality = DenoisingQuality()
        self.test_quality = DenoisingQuality()
        self.test_ids: list[str] = []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[DENOISER_PAYLOAD_KEY] = self.checkpoint_payload
        state = checkpoint["state_dict"]
        for key in [key for key in state if key.startswith(_LOSS_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # The loss's frozen weights were left out when saving: give back the current ones, so
        # resuming loads strictly.
        checkpoint["state_dict"].update(
            {f"{_LOSS_PREFIX}{key}": value for key, value in self.loss.state_dict().items()}
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def _loss_and_output(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        output = self(batch["image"])
        return self.loss(output, batch["target"]), output

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss_and_output(batch)
        return log_training_loss(self, loss, len(batch["image"]))

    def _evaluate(self, stage: str, batch: dict, quality: DenoisingQuality) -> None:
        loss, output = self._loss_and_output(batch)
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=len(output), sync_dist=True)
        quality.update(output, batch["image"], batch["target"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("val", batch, self.val_quality)

    def on_validation_epoch_end(self) -> None:
        self._log_quality("val", self.val_quality)

    def on_test_epoch_start(self) -> None:
        self.test_ids.clear()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("test", batch, self.test_quality)
        self.test_ids.extend(batch["id"])

    def on_test_epoch_end(self) -> None:
        # Read by the entry point for summary.json before the states are reset.
        self.test_summary = {
            "metrics": {k: float(v) for k, v in self.test_quality.compute().items()},
            "per_image": [
                {"id": image_id, **values}
                for image_id, values in zip(
                    gathered_ids(self.trainer, self.test_ids),
                    self.test_quality.per_image(),
                    strict=True,
                )
            ],
        }
        self._log_quality("test", self.test_quality)

    def _log_quality(self, stage: str, quality: DenoisingQuality) -> None:
        for name, value in quality.compute().items():  # over all processes (torchmetrics)
            self.log(f"{stage}/{name}", value, prog_bar=name == "psnr", sync_dist=False)
        quality.reset()

    def configure_optimizers(self) -> dict:
        return optimizers_config(
            self, self.optimizer_factory, self.scheduler_factory, self.hparams.scheduler_monitor
        )


class PairDataModule(pl.LightningDataModule):
    """Batches ``{"image": noisy, "target": clean, "id"}`` of a pair source's splits (any
    object whose ``splits()`` returns ``{"train", "val", "test"}`` datasets)."""

    def __init__(self, source, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        self.source = source
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self._datasets:  # fit then test call setup twice: make the pairs once
            self._datasets = self.source.splits()

    def _loader(self, split: str) -> DataLoader:
        dataset, training = self._datasets[split], split == "train"
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=training,
            drop_last=training and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
