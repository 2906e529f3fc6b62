"""Train a segmentation model, test its best checkpoint, write summary.json.

    python -m src.train +experiment=unet_dice [group=choice ...] [key=value ...]

Thin on purpose: every piece is built from its ``_target_`` config.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

import src  # noqa: F401  (sets PROJECT_ROOT for the configs)
from src.evaluation.evaluate import evaluate
from src.evaluation.records import evaluation_summary, write_evaluation
from src.inference.checkpoint import load_denoiser, load_model, restore_network
from src.lit.callbacks import TrainingLog
from src.lit.segmentation import SegmentationModule
from src.models.speed import accelerate, split_speed_options
from src.utils import (
    instantiate_callbacks,
    instantiate_loggers,
    print_config_tree,
    resolve_ckpt_path,
    task_wrapper,
)

log = logging.getLogger(__name__)


@task_wrapper
def train(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    if ckpt_path is not None and cfg.data.splits_file is None:
        # Resuming: keep the interrupted run's split if it wrote one.
        previous_split = ckpt_path.parent.parent / "splits.json"
        if previous_split.is_file():
            with open_dict(cfg):
                cfg.data.splits_file = str(previous_split)
    print_config_tree(cfg, save_to=output_dir / "config_resolved.yaml")
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = hydra.utils.instantiate(cfg.data)
    denoiser, denoiser_config = denoiser_prestage(cfg.get("denoiser"))
    # The checkpoint stores the plain network's config; the speed options are applied here.
    model_config, speed = split_speed_options(OmegaConf.to_container(cfg.model, resolve=True))
    module = SegmentationModule(
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
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_callbacks(cfg.get("callbacks")), logger=loggers
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    # The last epoch's values, and the best checkpoint's score, which sweepers optimise.
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    keeper = best_checkpoint_callback(trainer, cfg.optimized_metric)
    if keeper is not None and keeper.best_model_score is not None:
        metrics[f"{cfg.optimized_metric}_best"] = float(keeper.best_model_score)

    if cfg.test:
        best = Path(keeper.best_model_path) if keeper and keeper.best_model_path else None
        # Read before testing: loading the best checkpoint restores the callbacks' states.
        training = next((c.record() for c in trainer.callbacks if isinstance(c, TrainingLog)), None)
        metrics |= test_best_checkpoint(trainer, module, datamodule, best, training, cfg.eval)
    return metrics


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


def best_checkpoint_callback(trainer: pl.Trainer, monitor: str) -> ModelCheckpoint | None:
    """The checkpoint callback keeping the best ``monitor`` (last.ckpt's monitors nothing)."""
    return next((c for c in trainer.checkpoint_callbacks if c.monitor == monitor), None)


def test_best_checkpoint(
    trainer: pl.Trainer,
    module,
    datamodule,
    best: Path | None,
    training: dict | None,
    settings: DictConfig,
) -> dict[str, float]:
    """Test the best checkpoint on the held-out subjects: the trainer's pass at the training
    size (logged, all processes), then, on rank 0, the original-size evaluation that
    ``src.eval`` runs (restored from the checkpoint file, post-processing chosen on val).
    summary.json, per_image.csv and the Bland-Altman plot go beside the checkpoint, with
    the ``training`` record of the fit."""
    if best is None:
        # fast_dev_run and runs without a checkpoint callback: test the weights in memory.
        log.warning("no best checkpoint was saved; testing the current weights")
    trainer.test(module, datamodule=datamodule, ckpt_path=best)
    if not trainer.is_global_zero:
        return {}
    training_size = module.test_summary["metrics"]
    net = (
        load_model(best, map_location=module.device).net
        if best
        # The network the checkpoint would rebuild (with its denoising pre-stage, if any).
        else restore_network(module.checkpoint_payload, module.state_dict())
        .to(module.device)
        .eval()
    )
    result = evaluate(
        net,
        datamodule.split_rows("test"),
        datamodule.prepared_dir,
        datamodule.class_names,
        datamodule.image_size,
        tta_flip=settings.tta,
        robust_biometry=settings.robust_biometry,
        postprocess_setting=OmegaConf.to_object(settings.postprocess)
        if isinstance(settings.postprocess, DictConfig)
        else settings.postprocess,
        validation_rows=datamodule.split_rows("val"),
        strata_column=datamodule.stratify_column,
        in_channels=datamodule.reader.in_channels,  # per file; 2.5D stacks context_slices
        multilabel=datamodule.class_set.multilabel,
        context_slices=datamodule.context_slices,
        volume_column=datamodule.volume_column,
        slice_column=datamodule.slice_column,
    )
    summary = evaluation_summary(
        result,
        checkpoint=best,
        class_names=datamodule.class_names,
        split="test",
        training=training,
        training_resolution={
            "image_size": list(datamodule.image_size),
            "mean": {k: v for k, v in training_size.items() if k.endswith("_mean")},
            "per_class": {
                name: {m: training_size.get(f"{m}_{name}") for m in ("dice", "iou")}
                for name in datamodule.class_names[1:]
            },
        },
    )
    write_evaluation(
        summary, result["rows"], best.parent if best else Path(trainer.default_root_dir)
    )
    return {f"test/{k}": v for k, v in training_size.items()} | {
        f"test_original_size/{k}": v for k, v in result["metrics"].items() if k.endswith("_mean")
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    if metrics is None:  # a failed job of a sweep (see task_wrapper): Optuna records NaN as failed
        return float("nan")
    # For Hydra sweepers (e.g. Optuna): the best checkpoint's score, the one that is tested.
    return metrics.get(f"{cfg.optimized_metric}_best")


if __name__ == "__main__":
    main()
