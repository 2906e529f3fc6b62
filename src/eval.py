"""Evaluate a checkpoint at the images' original size: summary.json, per_image.csv, plots.

    python -m src.eval ckpt_path=<file.ckpt> [data overrides] [split=test|val|all] [tta=true]
        [postprocess=auto|none|{class: [rules]}] [out_dir=...]

Thin on purpose: the network comes from ``src.inference.checkpoint.load_model``, the images
from the data config's DataModule, the scores from ``src.evaluation.evaluate``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import src  # noqa: F401  (sets PROJECT_ROOT for the configs)
from src.data.splits import SPLIT_NAMES
from src.evaluation.evaluate import evaluate
from src.evaluation.records import evaluation_summary, write_evaluation
from src.inference.checkpoint import load_model
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
    with open_dict(cfg):
        # The cache the DataModule opens is at the network's input size.
        cfg.data.image_size = list(restored.image_size)
        # The 2.5D input the network was trained on (its in_channels follow).
        cfg.data.context_slices = (restored.context or {}).get("context_slices", 0)
        run_split = restored.checkpoint_path.parent.parent / "splits.json"
        if cfg.data.splits_file is None and run_split.is_file():
            log.info("using the training run's split %s", run_split)
            cfg.data.splits_file = str(run_split)
    datamodule = hydra.utils.instantiate(cfg.data)
    if tuple(datamodule.class_names) != restored.class_names:
        raise ValueError(
            f"{restored.checkpoint_path} was trained on classes {restored.class_names}, the "
            f"data config has {tuple(datamodule.class_names)}"
        )
    if datamodule.in_channels != restored.in_channels:
        raise ValueError(
            f"{restored.checkpoint_path} takes {restored.in_channels} input channel(s), the "
            f"data config's images have {datamodule.in_channels}"
        )
    datamodule.prepare_data()
    datamodule.setup()
    splits = SPLIT_NAMES if cfg.split == "all" else (cfg.split,)
    rows = pd.concat([datamodule.split_rows(s) for s in splits])
    setting = cfg.postprocess
    result = evaluate(
        restored.net,
        rows.reset_index(drop=True),
        datamodule.prepared_dir,
        restored.class_names,
        restored.image_size,
        tta_flip=bool(cfg.tta),
        robust_biometry=bool(cfg.robust_biometry),
        postprocess_setting=OmegaConf.to_container(setting)
        if isinstance(setting, DictConfig)
        else setting,
        validation_rows=datamodule.split_rows("val"),
        strata_column=datamodule.stratify_column,
        in_channels=datamodule.reader.in_channels,  # per file; 2.5D stacks context_slices
        multilabel=restored.multilabel,
        context_slices=datamodule.context_slices,
        volume_column=datamodule.volume_column,
        slice_column=datamodule.slice_column,
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
