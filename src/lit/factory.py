"""The SegmentationModule of a training config: network (with its speed options), loss,
optimizer, scheduler, the denoising pre-stage and what the checkpoint records, in one place,
so an entry point does not wire them by hand."""

from __future__ import annotations

import re

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
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
    check_loss_fits_data(OmegaConf.to_container(cfg.loss, resolve=True), datamodule)
    return SegmentationModule(
        net=accelerate(build_network(model_config), **speed),
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


def _choice(group: str, default: str) -> str:
    """``group=<choice>`` as the user wrote it, where Hydra knows it."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return f"{group}={choice}"
    return default


def _loss_modes(node) -> set[str]:
    """multiclass / multilabel, as the loss config's smp ``mode`` keys and torch targets say."""
    modes = set()
    if isinstance(node, dict):
        if node.get("mode") in ("multiclass", "multilabel", "binary"):
            modes.add("multilabel" if node["mode"] == "binary" else node["mode"])
        target = str(node.get("_target_", ""))
        if target.endswith(("CrossEntropyLoss", "NLLLoss")):
            modes.add("multiclass")
        if target.endswith(("BCEWithLogitsLoss", "BCELoss")):
            modes.add("multilabel")
        for value in node.values():
            modes |= _loss_modes(value)
    elif isinstance(node, list):
        for value in node:
            modes |= _loss_modes(value)
    return modes


def check_loss_fits_data(loss_config: dict, datamodule: SegmentationDataModule) -> None:
    """One line, before a library fails deep inside: a softmax loss on multi-label data
    (overlapping classes) or a sigmoid loss on label maps."""
    multilabel = datamodule.class_set.multilabel
    wrong = "multiclass" if multilabel else "multilabel"
    if wrong in _loss_modes(loss_config):
        data, loss = _choice("data", "this data"), _choice("loss", "the loss")
        if multilabel:
            raise ValueError(
                f"{data} is multi-label (its classes overlap): {loss} is single-label; "
                "use loss=bce_dice (or another multi-label loss)"
            )
        raise ValueError(
            f"{data} has one label per pixel: {loss} is multi-label; use loss=dice_ce "
            "(or another softmax loss)"
        )


def build_network(model_config: dict) -> nn.Module:
    """The network; a key the model's class does not take (set for another model, e.g. by an
    experiment, before ``model=`` swapped it) named in one line."""
    try:
        return hydra.utils.instantiate(model_config)
    except InstantiationException as error:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if unexpected is None:
            raise
        key, target = unexpected.group(1), model_config.get("_target_")
        raise ValueError(
            f"{_choice('model', 'the model')} ({target}) takes no model.{key}: it was set for "
            f"another model (by the experiment, or an override); drop it with ~model.{key}, "
            "or keep the experiment's model"
        ) from error


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
