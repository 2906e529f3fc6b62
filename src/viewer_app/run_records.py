"""Evaluated runs for the Run and Compare pages: a summary.json (found and read through
``src.runs``) as a ``RunRecord`` with its per-image table, runs labelled as the sweep report
names its jobs, and the tables sorted and joined over runs. No Streamlit here, so all of it is
unit-tested."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from src import runs
from src.viewer_app.settings import Inference

PER_CLASS_FAMILIES = ("dice", "iou", "hd95_mm", "assd_mm", "hd95_px", "assd_px")
LOWER_IS_WORSE = ("dice", "iou")  # every other metric: higher is worse (distances, errors)
# Numeric per-image columns that describe the image, not how well it was segmented.
NOT_METRICS = ("orig_width", "orig_height", "pixel_size_mm", "ellipse_")


@dataclass(frozen=True)
class RunRecord:
    """One evaluation of a run: its summary.json and the per-image table in it (the rows
    of per_image.csv), with ``dice_mean`` per image added (mean over the classes scored)."""

    summary_path: Path
    summary: dict
    table: pd.DataFrame
    label: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("background", *self.summary["classes"])

    @property
    def stratum_column(self) -> str | None:
        column = (self.summary.get("per_stratum") or {}).get("column")
        return column or ("plane" if "per_plane" in self.summary else None)

    def checkpoint(self) -> Path:
        """The evaluated checkpoint: the recorded path, or a file of that name beside the
        summary (a run folder moved since); the recorded path when neither exists."""
        recorded = Path(self.summary.get("checkpoint") or "")
        beside = self.summary_path.parent / recorded.name
        return beside if not recorded.is_file() and beside.is_file() else recorded

    def inference(self) -> Inference:
        """How the evaluation predicted: its checkpoint, flip TTA, post-processing rules."""
        settings = self.summary.get("settings") or {}
        return Inference(
            ckpt_paths=(str(self.checkpoint()),),
            tta_flip=bool(settings.get("tta_flip", False)),
            rules=(self.summary.get("postprocess") or {}).get("rules") or {},
            robust_biometry=bool(settings.get("robust_biometry", False)),
            source=f"the run {self.label}",
        )


def load_run(summary_path: str | Path, label: str | None = None) -> RunRecord:
    """A summary.json read into a ``RunRecord``; ValueError naming what is missing."""
    path = Path(summary_path)
    summary = runs.read_summary(path, required=())
    missing = [key for key in ("classes", "per_class", "per_image") if key not in summary]
    if missing:
        raise ValueError(
            f"{path}: no {', '.join(missing)} (expected a {runs.SUMMARY_JSON} written by "
            "src.eval or after training)"
        )
    table = pd.DataFrame(summary["per_image"])
    if table.empty or "id" not in table:
        raise ValueError(f"{path}: no per-image rows with an 'id' to show")
    dice = table.reindex(columns=[f"dice_{name}" for name in summary["classes"]])
    table.insert(1, "dice_mean", dice.astype(float).mean(axis=1, skipna=True))
    return RunRecord(path, summary, table, label or run_label(path))


def run_label(summary_path: Path) -> str:
    """A run's name: its job folder's overrides as the sweep report reads them (a sweep
    job), else the folder's name."""
    folder = summary_path.parent
    job = folder.parent if folder.name == runs.CHECKPOINTS_DIR else folder
    if runs.overrides_path(job).is_file():
        try:
            read = runs.read_job(job)
        except ValueError:
            return job.name
        setting = ", ".join(f"{key}={value}" for key, value in read.setting)
        return f"{job.name} ({setting}, fold {read.fold})"
    return job.name


def list_runs(folders: Sequence[str | Path]) -> tuple[dict[str, Path], list[str]]:
    """Evaluated runs under ``folders``, by label: each folder is an evaluated run, or a
    sweep whose finished jobs are listed fold by fold (so the first two are settings scored
    on the same images), labelled by the overrides that differ between them, as the rows of
    a sweep report. Also the problems, one per folder left out."""
    found: dict[str, Path] = {}
    problems = []
    for folder in map(Path, folders):
        try:
            newest = runs.find_summaries(folder)[0]
            found[run_label(newest)] = newest
            continue
        except FileNotFoundError as error:
            problem = str(error)
        try:
            finished = [job for job in runs.find_jobs([folder]) if job.status == "finished"]
            jobs = sorted(finished, key=lambda job: (job.fold, job.path.name))
        except (FileNotFoundError, ValueError):
            problems.append(problem)
            continue
        shared = set.intersection(*(set(job.setting) for job in jobs)) if jobs else set()
        for job in jobs:
            differs = ", ".join(f"{k}={v}" for k, v in job.setting if (k, v) not in shared)
            found[f"{job.path.name} ({differs or 'same setting'}, fold {job.fold})"] = (
                runs.run_summary_path(job.path)
            )
        if not jobs:
            problems.append(f"{folder}: a sweep without a finished job")
    return found, problems


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The per-image columns a table can be sorted by: numbers that score the image."""
    numeric = table.select_dtypes("number").columns
    return [column for column in numeric if column != "id" and not column.startswith(NOT_METRICS)]


def worst_first(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``table`` sorted worst first by ``metric``: lowest Dice/IoU, largest distance, largest
    absolute difference (``*_diff``); images without a value last."""
    values = table[metric].astype(float)
    if metric.startswith(LOWER_IS_WORSE):
        key = values
    elif metric.endswith("_diff"):
        key = -values.abs()
    else:
        key = -values
    return table.loc[key.sort_values(na_position="last", kind="stable").index]


def families(table: pd.DataFrame, class_names: Sequence[str]) -> list[str]:
    """The per-class metrics (dice, iou, hd95_mm, ...) with a value for some image."""
    return [
        family
        for family in PER_CLASS_FAMILIES
        if any(
            f"{family}_{name}" in table and table[f"{family}_{name}"].notna().any()
            for name in class_names[1:]
        )
    ]


def class_distribution(
    table: pd.DataFrame, family: str, class_names: Sequence[str]
) -> pd.DataFrame:
    """Long table (class, value) of one per-class metric over the images; images where it
    is undefined (NaN) left out, as in the class means."""
    parts = [
        pd.DataFrame({"class": name, "value": table[f"{family}_{name}"].astype(float)})
        for name in class_names[1:]
        if f"{family}_{name}" in table
    ]
    return pd.concat(parts, ignore_index=True).dropna()


def shown_columns(record: RunRecord, sort_metric: str) -> list[str]:
    """The run table's columns: the image, its stratum and subject, mean and per-class Dice,
    the head circumference and its quality score and flag, and the metric it is sorted by."""
    names = record.class_names[1:]
    wanted = [
        "id",
        record.stratum_column,
        "subject",
        "dice_mean",
        *(f"dice_{name}" for name in names),
        sort_metric,
        "hc_true",
        "hc_pred",
        "hc_diff",
        "biometry_units",
        "quality_score",
        "flagged",
    ]
    return [c for c in dict.fromkeys(wanted) if c is not None and c in record.table]


METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 mm", "hd95_px": "HD95 px"}


def per_class_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per class (and their mean): Dice, IoU and HD95 of each run, side by side; HD95 in mm
    where every class has it, else in px."""
    names = list(next(iter(records.values())).summary["classes"])
    out = pd.DataFrame(index=[*names, "mean"])
    for label, record in records.items():
        per_class, mean = record.summary["per_class"], record.summary.get("mean") or {}
        distance = next(
            (
                m
                for m in ("hd95_mm", "hd95_px")
                if all(per_class[n].get(m) is not None for n in names)
            ),
            None,
        )
        for metric in ("dice", "iou", *([distance] if distance else [])):
            values = [per_class[n].get(metric) for n in names] + [mean.get(f"{metric}_mean")]
            title = METRIC_TITLES[metric] + (f" · {label}" if len(records) > 1 else "")
            out[title] = pd.to_numeric(pd.Series(values, index=out.index), errors="coerce")
    return out


def join_runs(first: RunRecord, second: RunRecord) -> pd.DataFrame:
    """The images both runs scored, with each run's mean and per-class Dice and the change
    (second - first), largest change first."""
    if first.class_names != second.class_names:
        raise ValueError(
            f"the runs segment different classes ({', '.join(first.class_names[1:])} vs "
            f"{', '.join(second.class_names[1:])}): nothing to compare image by image"
        )
    scores = ["dice_mean", *(f"dice_{name}" for name in first.class_names[1:])]
    keep = ["id", *(c for c in (first.stratum_column,) if c and c in first.table)]
    joined = first.table[keep + scores].merge(
        second.table[["id", *scores]], on="id", suffixes=(" A", " B")
    )
    joined.insert(len(keep), "change", joined["dice_mean B"] - joined["dice_mean A"])
    return joined.loc[joined["change"].abs().sort_values(ascending=False, kind="stable").index]
