"""Pictures while training: a few fixed validation images with true and predicted masks every
few epochs, and the per-class Dice curves at the end of the fit."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning import Callback
from pytorch_lightning.loggers import WandbLogger

from src.metrics import decide
from src.runs import keep_existing
from src.visualize import comparison_row, grid

log = logging.getLogger(__name__)


class ValidationImages(Callback):
    """Every ``every_n_epochs`` epochs (from epoch 0), the first ``num_images`` images of the
    validation split (the same ones each time) with their true and predicted masks: as W&B
    mask overlays with class labels when a ``WandbLogger`` is among the trainer's loggers,
    else as one PNG grid per epoch, ``<dirpath>/epoch_NNN.png``. At the end of the fit,
    ``<dirpath>/dice_curves.png``: ``<dice_prefix><class>`` of every validation epoch.

    Nothing runs per step: one forward pass of ``num_images`` images per logged epoch, on
    rank 0 only (the other processes skip it). ``dirpath`` None: ``<default_root_dir>/
    val_images``. The Dice history is kept in checkpoints, so a resumed fit draws it whole;
    an existing PNG is kept (the new one gets a timestamp).
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 5,
        dirpath: str | None = None,
        dice_prefix: str = "val/dice_",
        wandb_key: str = "val/images",
    ) -> None:
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(
                f"ValidationImages: num_images and every_n_epochs must be >= 1, "
                f"got {num_images} and {every_n_epochs}"
            )
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.dirpath = Path(dirpath) if dirpath else None
        self.dice_prefix = dice_prefix
        self.wandb_key = wandb_key
        self.dice_history: dict[int, dict[str, float]] = {}
        self._samples: list[dict] | None = None

    # ------------------------------------------------------------------------------ hooks

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here rather than at the epoch's end: the module logs its epoch metrics in its own
        # on_validation_epoch_end, which Lightning calls after the callbacks' one.
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        dice = {
            key.removeprefix(self.dice_prefix): float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith(self.dice_prefix)
        }
        if dice:
            self.dice_history[epoch] = dice
        if epoch % self.every_n_epochs == 0:
            self.log_images(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.dice_history:
            path = keep_existing(self._dir(trainer) / "dice_curves.png")
            self.write_dice_curves(path)
            log.info("per-class Dice curves: %s", path)

    def state_dict(self) -> dict[str, Any]:
        return {"dice_history": self.dice_history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.dice_history = {int(k): v for k, v in state_dict["dice_history"].items()}

    # ---------------------------------------------------------------------------- pieces

    def log_images(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Predict the fixed images and hand them to W&B or write the epoch's PNG grid."""
        samples = self._fixed_samples(trainer)
        if not samples:
            return
        names = _class_names(trainer, pl_module)
        images = [_to_uint8(sample["image"]) for sample in samples]
        truths = [_shown_labels(sample["mask"].numpy()) for sample in samples]
        predictions = _predict(pl_module, samples)
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for logger in wandb_loggers:
            class_labels = dict(enumerate(names))
            logger.log_image(
                self.wandb_key,
                images,
                step=trainer.global_step,
                caption=[f"{sample['id']} (epoch {trainer.current_epoch})" for sample in samples],
                masks=[
                    {
                        "predictions": {"mask_data": predicted, "class_labels": class_labels},
                        "ground_truth": {"mask_data": truth, "class_labels": class_labels},
                    }
                    for predicted, truth in zip(predictions, truths, strict=True)
                ],
            )
        if wandb_loggers:
            return
        rows = [
            comparison_row(image, truth, predicted, names, title=Path(str(sample["id"])).stem)
            for image, truth, predicted, sample in zip(
                images, truths, predictions, samples, strict=True
            )
        ]
        path = keep_existing(self._dir(trainer) / f"epoch_{trainer.current_epoch:03d}.png")
        _write_png(grid(rows), path)

    def write_dice_curves(self, path: Path) -> Path:
        """One line per class over the epochs (matplotlib's Agg canvas, no pyplot state)."""
        from matplotlib.figure import Figure

        epochs = sorted(self.dice_history)
        classes = list(dict.fromkeys(c for e in epochs for c in self.dice_history[e]))
        figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
        axes = figure.add_subplot()
        for name in classes:
            values = [self.dice_history[e].get(name, np.nan) for e in epochs]
            style = "--" if name == "mean" else "-"
            axes.plot(epochs, values, style, marker=".", label=name)
        axes.set_xlabel("epoch")
        axes.set_ylabel(self.dice_prefix.rstrip("_"))
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        axes.legend()
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        figure.savefig(partial, format="png")
        os.replace(partial, path)  # never a half-written PNG under the final name
        return path

    def _dir(self, trainer: pl.Trainer) -> Path:
        return self.dirpath or Path(trainer.default_root_dir) / "val_images"

    def _fixed_samples(self, trainer: pl.Trainer) -> list[dict]:
        """The first ``num_images`` items of the validation dataset (unaugmented), read once.
        The dataset, not the loader: under DDP the loader holds this process's share only, and
        with ``data.cache_device=cuda`` its items are row numbers, not images."""
        if self._samples is None:
            datamodule = trainer.datamodule
            if datamodule is not None and hasattr(datamodule, "dataset"):
                dataset = datamodule.dataset("val")
            else:
                loaders = trainer.val_dataloaders
                dataset = (loaders[0] if isinstance(loaders, list | tuple) else loaders).dataset
            self._samples = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        return self._samples


def _class_names(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
    names = getattr(trainer.datamodule, "class_names", None) or pl_module.hparams.get("class_names")
    if not names:
        raise ValueError(
            "ValidationImages needs class names: from the datamodule's class_names or the "
            "module's hparams.class_names"
        )
    return list(names)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) float [0, 1] sample image as uint8: (H, W, 3) for RGB, else its first
    (or only) channel (H, W)."""
    shown = image.permute(1, 2, 0) if image.shape[0] == 3 else image[0]
    return (shown.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


@torch.no_grad()
def _predict(pl_module: pl.LightningModule, samples: list[dict]) -> list[np.ndarray]:
    batch = torch.stack([sample["image"] for sample in samples]).to(pl_module.device)
    was_training = pl_module.training
    pl_module.eval()
    try:
        predicted = decide(pl_module(batch), getattr(pl_module, "multilabel", False)).cpu()
    finally:
        pl_module.train(was_training)
    return [_shown_labels(labels.numpy()) for labels in predicted]


def _shown_labels(mask: np.ndarray) -> np.ndarray:
    """A label map to draw: the mask itself, or of multi-label (K, H, W) channels the
    highest-numbered class present per pixel (an overlap shows one of its classes)."""
    if mask.ndim == 2:
        return mask.astype(np.uint8)
    present = np.asarray(mask) > 0.5
    labels = np.zeros(mask.shape[1:], np.uint8)
    for k, channel in enumerate(present):
        labels[channel] = k + 1
    return labels


def _write_png(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
