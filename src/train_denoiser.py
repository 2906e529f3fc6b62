"""Train a denoiser on (noisy, clean) pairs, test its best checkpoint, write summary.json;
or score a classical filter on the same test pairs.

    python -m src.train_denoiser +experiment=diconvae_l1_msssim [denoiser/pairs=...] [key=value]
    python -m src.train_denoiser denoiser=nlm        # PSNR/SSIM of a classical filter, no training

Thin on purpose: the network, loss and pair source are built from their ``_target_`` configs
(``conf/denoiser``). summary.json (``checkpoints/``): the test split's mean and per-image
PSNR/SSIM of the output and of the noisy input, the ``training`` record, the pairs and loss.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

import src  # PROJECT_ROOT for the configs, CONF_DIR for Hydra
from src.inference.prestage import as_prestage
from src.lit.callbacks import TrainingLog, best_checkpoint_callback
from src.lit.denoising import DenoisingModule, PairDataModule
from src.runs import checkpoints_dir, resolved_config_path, write_summary
from src.utils import (
    instantiate_callbacks,
    instantiate_loggers,
    print_config_tree,
    resolve_ckpt_path,
    task_wrapper,
)

log = logging.getLogger(__name__)


@task_wrapper
def train_denoiser(cfg: DictConfig) -> dict[str, float]:
    denoiser = cfg.denoiser
    if denoiser is None or not ({"net", "filter"} & set(denoiser)):
        raise ValueError(
            f"denoiser={OmegaConf.to_yaml(denoiser).strip()}: src.train_denoiser trains a "
            "network (denoiser=diconvae) or scores a classical filter (denoiser=median, "
            "bilateral, nlm, srad); denoiser=none has nothing to do"
        )
    learned = "net" in denoiser
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, output_dir)
    print_config_tree(cfg, save_to=resolved_config_path(output_dir))
    pl.seed_everything(cfg.seed, workers=True)

    model_config = denoiser.net if learned else denoiser.filter
    datamodule = PairDataModule(
        hydra.utils.instantiate(denoiser.pairs),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
    )
    module = DenoisingModule(
        net=as_prestage(hydra.utils.instantiate(model_config)),
        loss=hydra.utils.instantiate(denoiser.loss),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.scheduler) if cfg.scheduler else None,
        scheduler_monitor=cfg.optimized_metric,
        model_config=OmegaConf.to_container(model_config, resolve=True),
        image_size=cfg.data.image_size,
    )
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=instantiate_callbacks(cfg.get("callbacks")), logger=loggers
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, float] = {}
    best, training = None, None
    if learned:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        keeper = best_checkpoint_callback(trainer, cfg.optimized_metric)
        if keeper is not None and keeper.best_model_score is not None:
            metrics[f"{cfg.optimized_metric}_best"] = float(keeper.best_model_score)
        best = Path(keeper.best_model_path) if keeper and keeper.best_model_path else None
        # Read before testing: loading the best checkpoint restores the callbacks' states.
        training = next((c.record() for c in trainer.callbacks if isinstance(c, TrainingLog)), None)
    if cfg.test:
        metrics |= test_denoiser(trainer, module, datamodule, best, training, cfg)
    return metrics


def test_denoiser(
    trainer: pl.Trainer,
    module: DenoisingModule,
    datamodule: PairDataModule,
    best: Path | None,
    training: dict | None,
    cfg: DictConfig,
) -> dict[str, float]:
    """PSNR/SSIM of the best checkpoint (or of the filter, or the current weights when no
    checkpoint was saved) on the test pairs; summary.json beside the checkpoint."""
    if best is None and training is not None:
        log.warning("no best checkpoint was saved; testing the current weights")
    trainer.test(module, datamodule=datamodule, ckpt_path=best)
    if not trainer.is_global_zero:
        return {}
    result = module.test_summary
    summary = {
        "checkpoint": str(best) if best else None,
        "denoiser": module.checkpoint_payload["model"],
        "training": training,
        "num_images": len(result["per_image"]),
        "mean": result["metrics"],
        "pairs": OmegaConf.to_container(cfg.denoiser.pairs, resolve=True),
        "loss": OmegaConf.to_container(cfg.denoiser.loss, resolve=True),
        "per_image": result["per_image"],
    }
    directory = best.parent if best else checkpoints_dir(cfg.paths.output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = write_summary(summary, directory)
    means = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
    log.info(f"Test summary ({summary['num_images']} images: {means}): {path}")
    return {f"test/{k}": v for k, v in result["metrics"].items()}


@hydra.main(version_base="1.3", config_path=src.CONF_DIR, config_name="train_denoiser")
def main(cfg: DictConfig) -> float | None:
    metrics = train_denoiser(cfg)
    if metrics is None:  # a failed job of a sweep (see task_wrapper)
        return float("nan")
    return metrics.get(f"{cfg.optimized_metric}_best")


if __name__ == "__main__":
    main()
