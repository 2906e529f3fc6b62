"""The SegmentationModule of a training config: network (with its speed options), loss,
optimizer, scheduler, the denoising pre-stage and what the checkpoint records, in one place,
so an entry point does not wire them by hand."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

from src.data.datamodule import SegmentationDataModule
from src.inference.checkpoint import load_denoiser
from src.lit.segmentation import SegmentationModule
from src.models.speed import accelerate, split_speed_options


def build_segmentation_module(
    cfg: DictConfig, datamodule: SegmentationDataModule
) -> SegmentationModule:
    """The module ``cfg`` (a composed conf/train.yaml) trains on ``datamodule``'s data."""
    denoiser, denoiser_config = denoiser_prestage(cfg.get("denoiser"))
    # The checkpoint stores the plain network's config; the speed options are applied here.
    model_config, speed = split_speed_options(OmegaConf.to_container(cfg.model, resolve=True))
    return SegmentationModule(
        net=accelerate(hydra.utils.instantiate(model_config), **speed),
        loss=hydra.utils.instantiate(cfg.loss),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.scheduler else None,
        class_names=datamodule.class_names,
        scheduler_monitor=cfg.optimized_metric,
        model_config=model_config,
        image_size=datamodule.image_size,
        in_channels=cfg.data.in_channels,
        denoiser=denoiser,
        denoiser_trainable=bool(OmegaConf.select(cfg, "denoiser.trainable", default=False)),
        denoiser_config=denoiser_config,
        multilabel=datamodule.class_set.multilabel,
        context={
            "context_slices": datamodule.context_slices,
            "volume_column": datamodule.volume_column,
            "slice_column": datamodule.slice_column,
        },
    )


def denoiser_prestage(cfg: DictConfig | None) -> tuple[nn.Module | None, dict | None]:
    """The learned denoiser to put in front of the segmenter (None without one), and the
    resolved config that rebuilds the pre-stage at eval/predict time (None without one).

    ``denoiser=none``: neither. A classical filter (``denoiser.filter``) runs in the data
    pipeline (``data.denoise``), so only its config is returned. A network comes from
    ``denoiser.ckpt_path`` (a ``src.train_denoiser`` checkpoint or run folder, rebuilt from
    its own config), else, to be trained with the segmenter, from ``denoiser.net``."""
    if cfg is None:
        return None, None
    if "filter" in cfg:
        return None, OmegaConf.to_container(cfg.filter, resolve=True)
    if cfg.ckpt_path:
        return load_denoiser(cfg.ckpt_path)
    if not cfg.trainable:
        raise ValueError(
            "denoiser.ckpt_path is null and denoiser.trainable=false: a frozen denoiser needs "
            "trained weights (denoiser.ckpt_path=<src.train_denoiser checkpoint or run folder>); "
            "or set denoiser.trainable=true to train it from scratch with the segmenter"
        )
    return hydra.utils.instantiate(cfg.net), OmegaConf.to_container(cfg.net, resolve=True)
