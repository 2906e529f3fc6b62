"""The run folder: one module decides where a run's records are, so that the entry points that
write them and the tools that read them (report, viewer, experiments) cannot drift apart.

A training run's folder (``paths.output_dir``)::

    config_resolved.yaml   the resolved config
    splits.json            the image ids of each split
    .hydra/                Hydra's record of the job: overrides.yaml, config.yaml
    csv/metrics.csv        the per-epoch values of the CSV logger
    checkpoints/           the .ckpt files; summary.json and per_image.csv of the best one
    FAILED                 written when a job of a sweep failed: its overrides and error
    *.log                  the job's log

``src.eval`` writes summary.json and per_image.csv into its own folder. Nothing already written
is replaced: a later record gets a timestamped name (``keep_existing``). Standard library,
pandas, OmegaConf and Hydra's override parser only, so every layer of ``src`` may use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import ListConfig, OmegaConf

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
SUMMARY_JSON = "summary.json"
SUMMARY_GLOB = "summary*.json"  # summary.json and the timestamped ones of later evaluations
PER_IMAGE_CSV = "per_image.csv"
SPLITS_JSON = "splits.json"
RESOLVED_CONFIG = "config_resolved.yaml"
HYDRA_DIR = ".hydra"
OVERRIDES_YAML = "overrides.yaml"
HYDRA_CONFIG = "config.yaml"
CSV_LOG_DIR = "csv"  # the CSV logger's name (conf/logger/csv.yaml)
METRICS_CSV = "metrics.csv"
FAILED_MARKER = "FAILED"
FAILED_LOG_LINE = "Run failed"  # logged by src.utils.task_wrapper
# The keys every summary.json has (the sweep report reads them).
SUMMARY_KEYS = ("classes", "mean", "per_class")

FOLD_KEY = "data.fold"
# Override keys that say where or how a run is recorded rather than what is trained.
NOT_A_SETTING = ("hydra", "paths", "ckpt_path", "task_name", "tags", "logger", "data.splits_file")

Setting = tuple[tuple[str, str], ...]  # sorted (key, value) pairs


# --- paths ----------------------------------------------------------------------------------


def checkpoints_dir(run_dir: Path) -> Path:
    """Where a training run saves its checkpoints and the records of the best one."""
    return Path(run_dir) / CHECKPOINTS_DIR


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a run saves after every epoch (what a resumed run continues from)."""
    return checkpoints_dir(run_dir) / LAST_CHECKPOINT


def run_dir_of(path: Path) -> Path:
    """The run folder of a file in its ``checkpoints/`` (a checkpoint, the best one's summary)."""
    return Path(path).parent.parent


def summary_path(directory: Path) -> Path:
    """summary.json in an evaluation's folder (beside a checkpoint: ``ckpt.parent``)."""
    return Path(directory) / SUMMARY_JSON


def run_summary_path(run_dir: Path) -> Path:
    """The summary.json of a training run's best checkpoint."""
    return summary_path(checkpoints_dir(run_dir))


def job_summary_path(job_dir: Path) -> Path:
    """A job's test summary: its best checkpoint's, or for a run without a checkpoint
    (``trainer.fast_dev_run``: the last weights are tested) the one at its root."""
    best, root = run_summary_path(job_dir), summary_path(Path(job_dir))
    return root if not best.is_file() and root.is_file() else best


def per_image_path(directory: Path) -> Path:
    """per_image.csv in an evaluation's folder."""
    return Path(directory) / PER_IMAGE_CSV


def splits_path(run_dir: Path) -> Path:
    """A run's splits.json (of a checkpoint's run: ``splits_path(run_dir_of(ckpt))``)."""
    return Path(run_dir) / SPLITS_JSON


def resolved_config_path(run_dir: Path) -> Path:
    """The resolved config a run saves at its start."""
    return Path(run_dir) / RESOLVED_CONFIG


def hydra_config_path(job_dir: Path) -> Path:
    """Hydra's own copy of a job's config (unresolved)."""
    return Path(job_dir) / HYDRA_DIR / HYDRA_CONFIG


def overrides_path(job_dir: Path) -> Path:
    """The command-line overrides Hydra recorded for a job."""
    return Path(job_dir) / HYDRA_DIR / OVERRIDES_YAML


def csv_log_dir(run_dir: Path) -> Path:
    """The CSV logger's folder (a resumed run's values go to ``resumed-<time>/`` in it)."""
    return Path(run_dir) / CSV_LOG_DIR


def metrics_csv_path(run_dir: Path) -> Path:
    """The per-epoch values the CSV logger wrote."""
    return csv_log_dir(run_dir) / METRICS_CSV


def failed_marker_path(job_dir: Path) -> Path:
    """The marker a failed job of a sweep leaves in its folder."""
    return Path(job_dir) / FAILED_MARKER


def keep_existing(path: Path) -> Path:
    """``path``, or a timestamped sibling when ``path`` exists (a resumed run writing into
    its old folder), so nothing already written is overwritten."""
    if not path.exists():
        return path
    stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
    stamped = path.with_name(f"{path.stem}.{stamp}{path.suffix}")
    while stamped.exists():
        n += 1
        stamped = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
    log.warning(f"{path} exists and is kept; writing {stamped.name}")
    return stamped


# --- records --------------------------------------------------------------------------------


def write_summary(summary: dict, directory: Path) -> Path:
    """Write ``summary.json``; an existing one is kept and the new one gets a timestamp."""
    path = keep_existing(summary_path(directory))
    # NaN (class absent in target and prediction) is written as null: valid JSON.
    path.write_text(json.dumps(_nan_to_none(summary), indent=2))
    return path


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def read_summary(path: Path, required: Sequence[str] = SUMMARY_KEYS) -> dict:
    """A summary.json; ValueError naming the file when it is not JSON or lacks a ``required``
    key."""
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    for key in required:
        if key not in summary:
            raise ValueError(f"{path}: no '{key}' key (expected a summary.json from src.train)")
    return summary


def write_per_image_csv(rows: Sequence[dict], directory: Path) -> Path:
    """``per_image.csv``: one row per image (id, plane, subject, pixel size, per-class
    metrics, biometry); an existing one is kept and the new one gets a timestamp."""
    path = keep_existing(per_image_path(directory))
    pd.DataFrame(list(rows)).to_csv(path, index=False)
    return path


def find_summaries(folder: str | Path) -> list[Path]:
    """The summaries in an evaluated folder (``src.eval``'s out_dir) or in a training run
    folder's ``checkpoints/``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected an evaluated run)")
    for place in (folder, checkpoints_dir(folder)):
        found = sorted(place.glob(SUMMARY_GLOB), key=lambda p: p.stat().st_mtime, reverse=True)
        if found:
            return found
    raise FileNotFoundError(
        f"{folder}: no summary.json here or in checkpoints/: evaluate the checkpoint first "
        "(`python -m src.eval ckpt_path=...`) or pick the run's folder"
    )


def resolve_run_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file as it is; a run folder: the best checkpoint its
    ``checkpoints/summary.json`` names (looked up in that folder, so a moved run works)."""
    path = Path(path)
    if not path.is_dir():
        return path
    summary = run_summary_path(path)
    named = json.loads(summary.read_text()).get("checkpoint") if summary.is_file() else None
    if not named:
        raise FileNotFoundError(
            f"{path}: a run folder whose checkpoints/summary.json names its best checkpoint "
            "was expected (or give the .ckpt file itself)"
        )
    return checkpoints_dir(path) / Path(named).name


# --- failed jobs ----------------------------------------------------------------------------


def write_failed_marker(
    job_dir: Path, error: Exception, overrides: str, log_file: Path | None = None
) -> Path:
    """Mark a job of a sweep as failed, with its overrides, the error and where its log is
    (a cluster's log, for a job that the cluster ended)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    path = failed_marker_path(job_dir)
    text = f"overrides: {overrides}\nerror: {type(error).__name__}: {error}\n"
    if log_file is not None:
        text += f"log: {log_file}\n"
    path.write_text(text)
    return path


def failed_jobs(sweep_dir: Path) -> dict[Path, str]:
    """The jobs of a sweep that left a failure marker, with what it says, in job order."""
    markers = sorted(Path(sweep_dir).glob(f"*/{FAILED_MARKER}"))
    return {marker.parent: marker.read_text().strip() for marker in markers}


def job_status(job_dir: Path) -> str:
    """*finished* (``checkpoints/summary.json``; timestamped siblings from resumed runs do not
    count), *failed* (a failure marker, or no summary and a log saying "Run failed") or
    *unfinished*."""
    if failed_marker_path(job_dir).exists():
        return "failed"
    if job_summary_path(job_dir).is_file():
        return "finished"
    logs = job_dir.glob("*.log")
    if any(FAILED_LOG_LINE in file.read_text(errors="replace") for file in logs):
        return "failed"
    return "unfinished"


# --- jobs of a sweep ------------------------------------------------------------------------


@dataclass
class Job:
    path: Path
    overrides: list[str]
    setting: Setting
    fold: int
    status: str  # finished | failed | unfinished
    summary: dict | None = None
    note: str = ""
    # What identifies the images of its train/val/test split (a hash of its splits.json;
    # None without one): two settings' folds are paired only where these are equal.
    split: str | None = None
    # Trained on a generated record (data.root is the data config's synthetic.root).
    synthetic: bool = False


def find_jobs(dirs: Sequence[Path]) -> list[Job]:
    """Every Hydra job folder under ``dirs`` (each once), read; missing dirs are an error."""
    paths: dict[Path, None] = {}
    for directory in dirs:
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: not a directory (expected a multirun folder)")
        for overrides in sorted(directory.rglob(f"{HYDRA_DIR}/{OVERRIDES_YAML}")):
            paths.setdefault(overrides.parent.parent.resolve())
    if not paths:
        raise FileNotFoundError(
            f"no Hydra job folder (one holding {HYDRA_DIR}/{OVERRIDES_YAML}) under "
            f"{', '.join(map(str, dirs))}: expected the folder of a `python -m src.train -m` sweep"
        )
    return [read_job(path) for path in paths]


def read_job(path: Path) -> Job:
    """A job folder: its overrides, its setting (the overrides without ``data.fold`` and
    ``NOT_A_SETTING``, compared as Hydra parses them), its fold (the override, else the
    config's, else 0), its status and, when finished, its summary."""
    overrides_file = overrides_path(path)
    loaded = OmegaConf.load(overrides_file)
    if not isinstance(loaded, ListConfig):
        raise ValueError(f"{overrides_file}: expected a list of overrides, got {loaded}")
    overrides = [str(line) for line in loaded]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        raise ValueError(f"{overrides_file}: not a list of Hydra overrides: {error}") from error
    pairs = {o.get_key_element().lstrip("+"): o.get_value_element_as_str() for o in parsed}
    fold = pairs.pop(FOLD_KEY, None)
    if fold is None:
        fold = _configured_fold(path)
    setting = tuple(sorted((k, v) for k, v in pairs.items() if not _is_not_a_setting(k)))
    status = job_status(path)
    summary = read_summary(job_summary_path(path)) if status == "finished" else None
    split_file = splits_path(path)
    split = (
        hashlib.sha256(split_file.read_bytes()).hexdigest()[:16] if split_file.is_file() else None
    )
    return Job(
        path,
        overrides,
        setting,
        _as_fold(fold, path),
        status,
        summary,
        split=split,
        synthetic=_trained_on_synthetic_data(path),
    )


def _is_not_a_setting(key: str) -> bool:
    return any(key == k or key.startswith((f"{k}.", f"{k}/")) for k in NOT_A_SETTING)


def _trained_on_synthetic_data(path: Path) -> bool:
    """Whether the job's resolved config read its data from the data config's synthetic
    source (a phantom or another generated record)."""
    config_file = resolved_config_path(path)
    if not config_file.is_file():
        return False
    data = OmegaConf.select(OmegaConf.load(config_file), "data", default=None) or {}
    synthetic_root = OmegaConf.select(data, "synthetic.root", default=None)
    root = data.get("root") if hasattr(data, "get") else None
    return bool(synthetic_root and root) and Path(str(root)).resolve() == Path(
        str(synthetic_root)
    ).resolve()


def _configured_fold(path: Path):
    """``data.fold`` of the job's resolved config (or Hydra's copy of it); 0 when unset."""
    for config_file in (resolved_config_path(path), hydra_config_path(path)):
        if config_file.is_file():
            return OmegaConf.select(OmegaConf.load(config_file), FOLD_KEY, default=0)
    return 0


def _as_fold(value, path: Path) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {FOLD_KEY} must be an integer, got {value!r}") from None


# --- processes that own a file --------------------------------------------------------------


def process_identity(pid: int | None = None) -> str:
    """``<host>:<pid>:<start time>`` of a process (default: this one): what a staging folder
    or an Optuna trial records of its owner, so that a later process can tell it is gone."""
    process = psutil.Process(pid)
    return f"{socket.gethostname()}:{process.pid}:{process.create_time():.0f}"


def process_is_gone(identity: str) -> bool:
    """True when ``identity`` names a process of this host that no longer runs (a pid now
    used by another process counts as gone); another host's process cannot be checked:
    False."""
    host, _, rest = identity.partition(":")
    pid, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        return process_identity(int(pid)) != identity
    except psutil.NoSuchProcess:
        return True
