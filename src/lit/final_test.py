"""The test after fitting: the trainer's pass at the training size, then the original-size
evaluation ``src.eval`` runs, on the held-out subjects; records beside the best checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig

from src.data.datamodule import SegmentationDataModule
from src.evaluation.evaluate import evaluate_split
from src.evaluation.records import evaluation_summary, write_evaluation
from src.inference.checkpoint import load_model, restore_network
from src.lit.segmentation import SegmentationModule

log = logging.getLogger(__name__)


def test_best_checkpoint(
    trainer: pl.Trainer,
    module: SegmentationModule,
    datamodule: SegmentationDataModule,
    best: Path | None,
    training: dict | None,
    settings: DictConfig,
) -> dict[str, float]:
    """Test the best checkpoint on the held-out subjects: the trainer's pass at the training
    size (logged, all processes), then, on rank 0, the original-size evaluation that
    ``src.eval`` runs (restored from the checkpoint file, post-processing chosen on val;
    ``settings``: train.yaml's ``eval``). summary.json, per_image.csv and the Bland-Altman
    plot go beside the checkpoint, with the ``training`` record of the fit."""
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
    result = evaluate_split(
        net,
        datamodule.split_source(),
        ("test",),
        image_size=datamodule.image_size,
        multilabel=datamodule.class_set.multilabel,
        tta=settings.tta,
        robust_biometry=settings.robust_biometry,
        postprocess=settings.postprocess,
    )
    summary = evaluation_summary(
        result,
        checkpoint=best,
        class_names=datamodule.class_names,
        split="test",
        training=training,
        training_resolution={
            "image_size": list(datamodule.image_size),
            # Images the trainer's test pass scored, over all processes: the split's size
            # unless a sampler repeated some (tests/test_ddp.py).
            "num_images": len(module.test_summary["per_image"]),
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
