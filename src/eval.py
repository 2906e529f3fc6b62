"""Evaluate a checkpoint at the images' original size: summary.json, per_image.csv, plots.

    python -m src.eval ckpt_path=<file.ckpt> [data overrides] [split=test|val|all] [tta=true]
        [postprocess=auto|none|{class: [rules]}] [out_dir=...]

Thin on purpose: the network comes from ``src.inference.checkpoint.load_model``, the split's
index.csv rows from the data config's DataModule (prepared, never cached: the network's input
size is the checkpoint's, whatever ``data.image_size`` says), the scores from
``src.evaluation.evaluate.evaluate_split``.

External validation (another copy of the data, e.g. HC18 scans of other subjects):
``data.root=<other> split=all`` scores every scan of it. The training run's split is used only
for the data it was made on, and where the scored images include the val split nothing is
decided on them: the post-processing rules and the quality flag's threshold are the ones the
checkpoint's own evaluation chose (its summary.json), so no label of the scored data tunes
what scores it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import src  # PROJECT_ROOT for the configs, CONF_DIR for Hydra
from src.data.splits import SPLIT_NAMES
from src.evaluation.evaluate import evaluate_split
from src.evaluation.records import evaluation_summary, write_evaluation
from src.inference.checkpoint import load_model
from src.runs import read_summary, resolved_config_path, run_dir_of, splits_path, summary_path
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
    run_dir = run_dir_of(restored.checkpoint_path)
    run_split = splits_path(run_dir)
    if cfg.data.splits_file is None and run_split.is_file():
        if same_data_root(run_dir, cfg.data.root):
            log.info("using the training run's split %s", run_split)
            data["splits_file"] = str(run_split)
        else:
            log.info("data.root=%s is not the training run's data: its own split", cfg.data.root)
    datamodule = hydra.utils.instantiate(cfg.data, **data)
    datamodule.check_network(restored.class_names, restored.in_channels, restored.checkpoint_path)
    datamodule.prepare_record()
    splits = SPLIT_NAMES if cfg.split == "all" else (cfg.split,)
    postprocess, threshold = cfg.postprocess, None
    if "val" in splits:
        postprocess, threshold = recorded_decisions(restored.checkpoint_path, cfg.postprocess)
    result = evaluate_split(
        restored.net,
        datamodule.split_source(),
        splits,
        image_size=restored.image_size,
        multilabel=restored.multilabel,
        tta=bool(cfg.tta),
        robust_biometry=bool(cfg.robust_biometry),
        postprocess=postprocess,
        quality_threshold=threshold,
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


def same_data_root(run_dir: Path | None, root: str) -> bool:
    """Whether the training run (its saved config) read its data from ``root``."""
    if run_dir is None or not resolved_config_path(run_dir).is_file():
        return True  # nothing says otherwise: the split file's own ids are checked on use
    trained_on = OmegaConf.load(resolved_config_path(run_dir)).get("data", {}).get("root")
    return trained_on is None or Path(str(trained_on)).resolve() == Path(str(root)).resolve()


def recorded_decisions(checkpoint: Path, postprocess) -> tuple[object, float | None]:
    """The post-processing and quality threshold to score data that includes the val split
    with: what the checkpoint's summary.json recorded (``postprocess=auto``: its rules), since
    deciding on val would tune on the scored images. None where nothing was recorded (no
    rules, no flag), with a warning."""
    path = summary_path(checkpoint.parent)
    recorded = read_summary(path, required=()) if path.is_file() else {}
    threshold = (recorded.get("quality") or {}).get("threshold")
    if postprocess == "auto":
        rules = (recorded.get("postprocess") or {}).get("rules")
        if rules is None:
            log.warning("%s records no post-processing: scoring without any", path)
        postprocess = rules or "none"
    if threshold is None:
        log.warning("%s records no quality threshold: nothing will be flagged", path)
    return postprocess, threshold


@hydra.main(version_base="1.3", config_path=src.CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
