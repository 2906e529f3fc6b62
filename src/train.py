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

import src  # noqa: F401  (sets PROJECT_ROOT for the configs)
from src.lit.segmentation import SegmentationModule
from src.metrics import EMPTY_MASK_RULE
from src.summary import build_summary, print_summary_table, write_summary
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
    module = SegmentationModule(
        net=hydra.utils.instantiate(cfg.model),
        loss=hydra.utils.instantiate(cfg.loss),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.scheduler else None,
        class_names=datamodule.class_names,
    )
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_callbacks(cfg.get("callbacks")), logger=loggers
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    if cfg.test:
        metrics |= test_best_checkpoint(trainer, module, datamodule)
    return metrics


def test_best_checkpoint(trainer: pl.Trainer, module, datamodule) -> dict[str, float]:
    """Test the best checkpoint (by val/dice_mean) on the held-out subjects; summary.json."""
    callback = trainer.checkpoint_callback
    best = Path(callback.best_model_path) if callback and callback.best_model_path else None
    if best is None:
        # fast_dev_run and runs without a checkpoint callback: test the weights in memory.
        log.warning("no best checkpoint was saved; testing the current weights")
    trainer.test(module, datamodule=datamodule, ckpt_path=best)
    if not trainer.is_global_zero:
        return {}
    summary = build_summary(
        checkpoint=best,
        metrics=module.test_summary["metrics"],
        per_image=module.test_summary["per_image"],
        class_names=datamodule.class_names,
        empty_rule=EMPTY_MASK_RULE,
        image_info=datamodule.test_image_info(),
    )
    path = write_summary(summary, best.parent if best else Path(trainer.default_root_dir))
    print_summary_table(summary)
    log.info(f"Test summary: {path}")
    return {f"test/{k}": v for k, v in module.test_summary["metrics"].items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # Returned for Hydra sweepers (e.g. Optuna) that optimise a value.
    return metrics.get("val/dice_mean")


if __name__ == "__main__":
    main()
