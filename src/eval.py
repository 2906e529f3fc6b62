"""Evaluate a checkpoint at the images' original size: summary.json, per_image.csv, plots.

    python -m src.eval ckpt_path=<file.ckpt> [data overrides] [split=test|val|all] [tta=true]
        [postprocess=auto|none|{class: [rules]}] [out_dir=...]

Thin on purpose: the network comes from ``src.inference.checkpoint.load_model``, the split's
index.csv rows from the data config's DataModule (prepared, never cached: the network's input
size is the checkpoint's, whatever ``data.image_size`` says), the scores from
``src.evaluation.evaluate.evaluate_split``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

import src  # PROJECT_ROOT for the configs, CONF_DIR for Hydra
from src.data.splits import SPLIT_NAMES
from src.evaluation.evaluate import evaluate_split
from src.evaluation.records import evaluation_summary, write_evaluation
from src.inference.checkpoint import load_model
from src.runs import run_dir_of, splits_path
from src.utils import task_wrapper

log = logging.getLogger(__name__)
SPLITS = (*SPLIT_NAMES, "all")


@task_wrapper
def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split}: expected one of {', '.join(SPLITS)}")
    device = (
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    restored = load_model(cfg.ckpt_path, map_location=device)
    # The 2.5D input the network was trained on (its in_channels follow), and the training
    # run's split when the checkpoint is still in its run folder and none is given.
    data = {"context_slices": (restored.context or {}).get("context_slices", 0)}
    run_split = splits_path(run_dir_of(restored.checkpoint_path))
    if cfg.data.splits_file is None and run_split.is_file():
        log.info("using the training run's split %s", run_split)
        data["splits_file"] = str(run_split)
    datamodule = hydra.utils.instantiate(cfg.data, **data)
    datamodule.check_network(restored.class_names, restored.in_channels, restored.checkpoint_path)
    datamodule.prepare_record()
    result = evaluate_split(
        restored.net,
        datamodule.split_source(),
        SPLIT_NAMES if cfg.split == "all" else (cfg.split,),
        image_size=restored.image_size,
        multilabel=restored.multilabel,
        tta=bool(cfg.tta),
        robust_biometry=bool(cfg.robust_biometry),
        postprocess=cfg.postprocess,
    )
    summary = evaluation_summary(
        result,
        checkpoint=restored.checkpoint_path,
        class_names=restored.class_names,
        split=cfg.split,
    )
    out_dir = Path(cfg.out_dir) if cfg.out_dir else restored.checkpoint_path.parent
    write_evaluation(summary, result["rows"], out_dir)
    return result["metrics"]


@hydra.main(version_base="1.3", config_path=src.CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
