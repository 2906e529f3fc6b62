"""Train a segmentation model, test its best checkpoint, write summary.json.

    python -m src.train +experiment=unet_dice [group=choice ...] [key=value ...]

Thin on purpose: every piece is built from its ``_target_`` config (the LightningModule by
``src.lit.factory``), the test after fitting is ``src.lit.final_test``'s.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

import src  # PROJECT_ROOT for the configs, CONF_DIR for Hydra
from src.lit.callbacks import TrainingLog, best_checkpoint_callback
from src.lit.factory import build_segmentation_module
from src.lit.final_test import test_best_checkpoint
from src.runs import resolved_config_path, run_dir_of, splits_path
from src.utils import (
    instantiate_callbacks,
    instantiate_loggers,
    print_config_tree,
    resolve_ckpt_path,
    task_wrapper,
)


@task_wrapper
def train(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    if ckpt_path is not None and cfg.data.splits_file is None:
        # Resuming: keep the interrupted run's split if it wrote one.
        previous_split = splits_path(run_dir_of(ckpt_path))
        if previous_split.is_file():
            with open_dict(cfg):
                cfg.data.splits_file = str(previous_split)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Checked and built before the config is printed and the Trainer talks: a wrong root, a
    # split the data cannot fill or a config mistake is then the first thing shown.
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_record()
    datamodule.split_source()
    module = build_segmentation_module(cfg, datamodule)
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_callbacks(cfg.get("callbacks")), logger=loggers
    )
    print_config_tree(cfg, save_to=resolved_config_path(output_dir))
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


@hydra.main(version_base="1.3", config_path=src.CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    if metrics is None:  # a failed job of a sweep (see task_wrapper): Optuna records NaN as failed
        return float("nan")
    # For Hydra sweepers (e.g. Optuna): the best checkpoint's score, the one that is tested.
    return metrics.get(f"{cfg.optimized_metric}_best")


if __name__ == "__main__":
    main()
