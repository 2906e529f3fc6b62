"""Evaluate a checkpoint at the images' original size: summary.json, per_image.csv, plots.

    python -m src.eval ckpt_path=<file.ckpt> [data overrides] [split=test|val|all] [tta=true]
        [postprocess=auto|none|{class: [rules]}] [out_dir=...]

Thin on purpose: the network comes from ``src.inference.checkpoint.load_model``, the split's
index.csv rows from the data config's DataModule (prepared, never cached: the network's input
size is the checkpoint's, whatever ``data.image_size`` says), the scores from
``src.evaluation.evaluate.evaluate_split``.

The split scored is the checkpoint's own (it carries the image ids of its split and the
fingerprint of the data it was made of), wherever the file lies; ``summary.json`` records where
the split came from (``split_origin``), with fold, seed and the data's fingerprint.
External validation (other data, e.g. HC18 scans of other subjects): ``data.root=<other>
split=all`` scores every scan of it; ``split=test|val`` is refused there. Where the scored
images include the val split nothing is decided on them: the post-processing rules and the
quality flag's threshold are the ones the checkpoint's own evaluation chose (its
summary.json), so no label of the scored data tunes what scores it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

import src  # PROJECT_ROOT for the configs, CONF_DIR for Hydra
from src.data.splits import SPLIT_NAMES, data_fingerprint, selected_rows, splits_of_record
from src.evaluation.evaluate import evaluate_split
from src.evaluation.records import evaluation_summary, write_evaluation
from src.inference.checkpoint import load_model
from src.inference.quality import evaluated_settings
from src.runs import SPLITS_JSON, read_summary, run_dir_of, splits_path, summary_path
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
    # The 2.5D input the network was trained on (its in_channels follow).
    data = {"context_slices": (restored.context or {}).get("context_slices", 0)}
    datamodule = hydra.utils.instantiate(cfg.data, **data)
    datamodule.check_network(restored.class_names, restored.in_channels, restored.checkpoint_path)
    datamodule.prepare_record()
    split_origin = choose_split(restored, datamodule, cfg)
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
        tta=bool(evaluated_settings([restored.checkpoint_path])["tta_flip"])
        if cfg.tta is None
        else bool(cfg.tta),
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
    used = datamodule.split_record()
    summary["split_origin"] = split_origin | {
        key: used[key] for key in ("n_folds", "fold", "seed", "data_fingerprint")
    }
    out_dir = Path(cfg.out_dir) if cfg.out_dir else restored.checkpoint_path.parent
    write_evaluation(summary, result["rows"], out_dir)
    return result["metrics"]


def choose_split(restored, datamodule, cfg: DictConfig) -> dict:
    """Point ``datamodule`` at the split to score and say where it came from: ``splits_file``
    when given; else the checkpoint's own split when the data is the data it was trained on
    (same fingerprint), wherever the checkpoint file lies; else, for other data (external
    validation), its own split, which only ``split=all`` may score: val or test images of
    another data's split would be reported as a held-out score they are not. A checkpoint
    without a recorded split (older ones): the training run's splits.json when it is still
    in its run folder, else the config's split, with a warning naming what was assumed."""
    if cfg.data.splits_file is not None:
        return {"from": "splits_file", "path": str(cfg.data.splits_file)}
    rows = selected_rows(datamodule.prepared_dir, datamodule.select)
    fingerprint = data_fingerprint(rows)
    recorded = restored.split
    if recorded is not None:
        if recorded.get("data_fingerprint") == fingerprint:
            path = Path(tempfile.mkdtemp(prefix="sonoseg-split-")) / SPLITS_JSON
            splits_of_record(recorded).write(path)
            datamodule.splits_file = path
            log.info(
                "scoring the checkpoint's own split (fold %s, seed %s)",
                recorded["fold"],
                recorded["seed"],
            )
            return {"from": "checkpoint"}
        if cfg.split != "all":
            raise ValueError(
                f"data.root={cfg.data.root} is not the data {restored.checkpoint_path.name} was "
                f"trained on (data fingerprint {fingerprint}, trained on "
                f"{recorded.get('data_fingerprint')}): its split={cfg.split} would not be "
                "held-out images. Use split=all to score every image of this data."
            )
        return {"from": "recomputed: other data than the checkpoint's (split=all)"}
    run_split = splits_path(run_dir_of(restored.checkpoint_path))
    if run_split.is_file():
        log.warning(
            "%s records no split (an older checkpoint): assuming its run folder's %s",
            restored.checkpoint_path,
            run_split,
        )
        datamodule.splits_file = run_split
        return {"from": "run folder (the checkpoint records none)", "path": str(run_split)}
    log.warning(
        "%s records no split (an older checkpoint) and lies outside its run folder: assuming "
        "the config's split (fold %s, seed %s); its test images may have been trained on",
        restored.checkpoint_path,
        cfg.data.fold,
        cfg.data.seed,
    )
    return {"from": "recomputed from the config (the checkpoint records none)"}


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
