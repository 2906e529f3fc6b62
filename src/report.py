"""Compare the settings of one or more Hydra sweeps: report.md, report.csv, report.png.

    python -m src.report <multirun dir> [more dirs] [out_dir=DIR] [overwrite=true]

Every job folder (one holding ``.hydra/overrides.yaml``) under the given dirs is read
(``src.runs.read_job``):

- **fold**: ``data.fold`` from the job's overrides, else from its config, else 0.
- **setting**: the job's overrides without ``data.fold`` and without the keys that name where
  or how a run is recorded rather than what is trained (``NOT_A_SETTING``: ``hydra.*``,
  ``paths.*``, ``ckpt_path``, ``task_name``, ``tags``, ``logger``, ``data.splits_file``).
  Overrides are compared as Hydra parses them (``+key`` and ``key`` alike, ``1e-3`` and
  ``0.001`` alike). The folds of one setting are averaged.
- **status**: *finished* (``checkpoints/summary.json``; its timestamped siblings from resumed
  runs are ignored), *failed* (a ``FAILED`` marker file, or no summary and a log saying
  "Run failed") or *unfinished* (no summary, no failure logged). Failed and unfinished jobs
  are listed in the report, never dropped.
- The same setting and fold finished twice (say, in two sweeps) is an error naming both
  folders: averaging both would count that fold twice, and picking one silently would hide
  the other. A failed job whose setting and fold finished elsewhere is listed with a pointer
  to the finished one.

Per setting: mean and sample standard deviation (ddof=1) over its folds of every column.
Paired comparisons of ``dice_mean`` (Wilcoxon signed-rank test on the folds two settings both
finished with the same split, at least 2: their jobs' ``splits.json`` are equal, so another
``data.seed``, other data or another splits file is no pair, and the report says why): every
pair up to 5 settings, else each setting against the best. With n folds an exact two-sided
test cannot go below p = 2/2^n; the report says so. A sweep folder with an Optuna study record
(``optuna_study.yaml``) also gets the study's trials.

The report is written to ``out_dir`` (default: the first dir). Existing report files there
are never replaced unless ``overwrite=true``: the command refuses before writing anything.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from src.runs import CHECKPOINTS_DIR, NOT_A_SETTING, SUMMARY_JSON, Job, Setting, find_jobs
from src.studies import study_trials

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

REPORT_FILES = ("report.md", "report.csv", "report.png")
# The paired test compares this metric; with more settings than this, each is compared with
# the best setting only (all pairs of 6 settings would already be 15 tests).
PAIRED_METRIC = "dice_mean"
MAX_SETTINGS_FOR_ALL_PAIRS = 5


@dataclass
class Comparison:
    first: str
    second: str
    folds: list[int]
    differences: list[float]  # first - second, per shared fold
    p_value: float
    not_paired: str = ""  # why no test was made (the settings' folds are not the same splits)

    @property
    def smallest_p(self) -> float:
        """The smallest p an exact two-sided Wilcoxon test can give with this many pairs."""
        return 2.0 / 2 ** len(self.folds)


@dataclass
class Report:
    sources: list[Path]
    jobs: list[Job]
    classes: list[str]
    common: list[str]  # overrides shared by every setting
    per_fold: pd.DataFrame  # one row per finished job: setting label, fold, metrics
    table: pd.DataFrame  # one row per setting (its label): <metric>_mean, _std, _n
    comparisons: list[Comparison]
    against_best_only: bool  # compared with the best setting only, not all pairs
    # The trials of the Optuna study each source recorded (src.studies), if any.
    studies: dict[Path, pd.DataFrame] = field(default_factory=dict)


# Head circumference, mm: |pred - ellipse of the true mask| and |pred - the sonographer's
# value| (HC18's CSV), mean and worst image.
BIOMETRY_COLUMNS = ("hc_mae_mm", "hc_ref_mae_mm", "hc_ref_max_mm")
# Data with volumes (src.evaluation.volumes): mean per-volume Dice, and slice detection
# sensitivity and specificity (mean over the foreground classes).
VOLUME_COLUMNS = ("volume_dice_mean", "slice_sensitivity", "slice_specificity")


def job_metrics(summary: dict) -> dict[str, float]:
    """A summary flattened to one number per column; absent values (no ``training`` block,
    a class absent from every test image) are NaN."""
    row = {m: summary["mean"].get(m) for m in ("dice_mean", "iou_mean")}
    for name in summary["classes"]:
        scores = summary["per_class"].get(name) or {}
        row |= {f"{m}_{name}": scores.get(m) for m in ("dice", "iou")}
    training = summary.get("training") or {}
    row |= {k: training.get(k) for k in ("num_parameters", "seconds_per_epoch", "best_epoch")}
    in_mm = (summary.get("biometry") or {}).get("mm") or {}
    versus_reference = in_mm.get("hc_vs_reference") or {}
    row |= {
        "hc_mae_mm": (in_mm.get("differences", {}).get("hc") or {}).get("mean_abs"),
        "hc_ref_mae_mm": versus_reference.get("mean_abs"),
        "hc_ref_max_mm": versus_reference.get("max_abs"),
    }
    per_volume = summary.get("per_volume") or {}
    found = list(((summary.get("detection") or {}).get("per_class") or {}).values())
    row |= {
        "volume_dice_mean": (per_volume.get("mean") or {}).get("dice_mean"),
        **{
            f"slice_{rate}": _mean_of([c.get(rate) for c in found])
            for rate in ("sensitivity", "specificity")
        },
    }
    return {k: math.nan if v is None else float(v) for k, v in row.items()}


def _mean_of(values: list) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return sum(finite) / len(finite) if finite else None


# --- building the report --------------------------------------------------------------------


def build_report(dirs: Sequence[Path]) -> Report:
    jobs = find_jobs(dirs)
    finished = [j for j in jobs if j.status == "finished"]
    if not finished:
        listing = "\n".join(f"  {j.status}: {j.path}" for j in jobs)
        raise ValueError(
            f"no finished job ({CHECKPOINTS_DIR}/{SUMMARY_JSON}) under "
            f"{', '.join(map(str, dirs))}:\n{listing}"
        )
    _check_duplicates(jobs)

    classes = list(dict.fromkeys(c for j in finished for c in j.summary["classes"]))
    settings = sorted({j.setting for j in finished})
    common, labels = _label_settings(settings)
    columns = _metric_columns(classes)
    per_fold = pd.DataFrame(
        [
            {"setting": labels[j.setting], "fold": j.fold, "split": j.split}
            | job_metrics(j.summary)
            for j in finished
        ],
        columns=["setting", "fold", "split", *columns],
    ).sort_values(["setting", "fold"], ignore_index=True)
    splits = per_fold.pivot(index="fold", columns="setting", values="split")
    # Head-circumference and volume columns only where some run has them.
    optional = (*BIOMETRY_COLUMNS, *VOLUME_COLUMNS)
    columns = [c for c in columns if c not in optional or per_fold[c].notna().any()]
    per_fold = per_fold[["setting", "fold", *columns]]
    table = per_fold.groupby("setting", sort=False)[columns].agg(["mean", "std", "count"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table = table.rename(columns=lambda c: c.replace("_count", "_n"))
    table.insert(0, "folds", per_fold.groupby("setting", sort=False)["fold"].agg(_fold_list))
    table.insert(0, "n_folds", per_fold.groupby("setting", sort=False)["fold"].count())

    comparisons, against_best_only = paired_comparisons(per_fold, table, splits)
    studies = {Path(d): t for d in dirs if (t := study_trials(Path(d))) is not None}
    return Report(
        list(dirs), jobs, classes, common, per_fold, table, comparisons, against_best_only, studies
    )


def _check_duplicates(jobs: list[Job]) -> None:
    """A setting and fold finished twice is an error; a failed or unfinished job whose
    setting and fold finished elsewhere (a rerun) gets a note pointing there."""
    finished: dict[tuple[Setting, int], Job] = {}
    for job in (j for j in jobs if j.status == "finished"):
        other = finished.setdefault((job.setting, job.fold), job)
        if other is not job:
            raise ValueError(
                f"the same setting and fold {job.fold} finished twice: {other.path} and "
                f"{job.path}; pass only the sweep whose result should count"
            )
    for job in (j for j in jobs if j.status != "finished"):
        rerun = finished.get((job.setting, job.fold))
        if rerun is not None:
            job.note = f"finished in {rerun.path}"


def _label_settings(settings: list[Setting]) -> tuple[list[str], dict[Setting, str]]:
    """Overrides common to all settings, and each setting named by the ones that differ."""
    shared = set.intersection(*(set(s) for s in settings))
    common = [f"{k}={v}" for k, v in sorted(shared)]
    if len(settings) == 1:
        return common, {settings[0]: ", ".join(common) or "(defaults)"}
    labels = {
        s: ", ".join(f"{k}={v}" for k, v in s if (k, v) not in shared) or "(defaults)"
        for s in settings
    }
    return common, labels


def _metric_columns(classes: list[str]) -> list[str]:
    return [
        "dice_mean",
        "iou_mean",
        *(f"dice_{c}" for c in classes),
        *(f"iou_{c}" for c in classes),
        *BIOMETRY_COLUMNS,
        *VOLUME_COLUMNS,
        "num_parameters",
        "seconds_per_epoch",
        "best_epoch",
    ]


def _fold_list(folds: pd.Series) -> str:
    return ",".join(str(f) for f in sorted(folds))


def paired_comparisons(
    per_fold: pd.DataFrame, table: pd.DataFrame, splits: pd.DataFrame | None = None
) -> tuple[list[Comparison], bool]:
    """Wilcoxon signed-rank tests of ``PAIRED_METRIC`` on the folds two settings share (at
    least 2): the same fold of the same split (``splits``: per fold and setting, the job's
    split identity, ``src.runs.Job.split``); a fold whose jobs were trained and tested on
    different images (another data.seed, other data) is not a pair. All pairs up to
    ``MAX_SETTINGS_FOR_ALL_PAIRS`` settings, else each against the best; the second return
    value says which. A pair left without a test says why (``Comparison.not_paired``)."""
    scores = per_fold.pivot(index="fold", columns="setting", values=PAIRED_METRIC)
    settings = list(table.index)
    best = table[f"{PAIRED_METRIC}_mean"].idxmax()
    against_best_only = len(settings) > MAX_SETTINGS_FOR_ALL_PAIRS
    if against_best_only:
        pairs = [(best, s) for s in settings if s != best]
    else:
        pairs = list(itertools.combinations(settings, 2))
    comparisons = []
    for first, second in pairs:
        shared = scores[[first, second]].dropna()
        if splits is not None and len(shared):
            same = splits.loc[shared.index, first] == splits.loc[shared.index, second]
            same &= splits.loc[shared.index, first].notna()
            if not same.all():
                differing = [int(f) for f in shared.index[~same]]
                shared = shared[same]
                if len(shared) < 2:
                    comparisons.append(
                        Comparison(
                            first,
                            second,
                            [],
                            [],
                            math.nan,
                            not_paired=f"fold(s) {differing} were split differently (another "
                            "data.seed, data or splits_file; or no splits.json): not pairs",
                        )
                    )
                    continue
        if len(shared) < 2:
            continue
        differences = shared[first] - shared[second]
        # All-zero differences: scipy returns p=1 with a RuntimeWarning; no test is needed.
        p_value = 1.0 if (differences == 0).all() else float(wilcoxon(differences).pvalue)
        comparisons.append(
            Comparison(first, second, [int(f) for f in shared.index], list(differences), p_value)
        )
    return comparisons, against_best_only


# --- writing it -----------------------------------------------------------------------------

# Higher is better for the scores, lower for errors, size and time; best_epoch has no better
# side.
_LOWER_IS_BETTER = {"num_parameters", "seconds_per_epoch", *BIOMETRY_COLUMNS}
_NO_BEST = {"best_epoch"}
_FORMATS = {"num_parameters": ",.0f", "seconds_per_epoch": ".1f", "best_epoch": ".1f"} | {
    column: ".2f" for column in BIOMETRY_COLUMNS
}
_HEADERS = {"num_parameters": "parameters", "seconds_per_epoch": "s/epoch"}


def write_report(report: Report, out_dir: Path, *, overwrite: bool = False) -> list[Path]:
    """report.md, report.csv and report.png in ``out_dir``; refuses (before writing any of
    them) when one exists and ``overwrite`` is false."""
    paths = [out_dir / name for name in REPORT_FILES]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(map(str, existing))} already exist(s); nothing was written. "
            "Pass overwrite=true to replace them, or out_dir=<another folder>."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, csv_path, png_path = paths
    report.table.to_csv(csv_path, index_label="setting")
    plot_scores(report, png_path)
    md_path.write_text(render_markdown(report, png_path.name))
    return paths


def render_markdown(report: Report, png_name: str) -> str:
    table = report.table
    columns = [c for c in _metric_columns(report.classes) if f"{c}_mean" in table]
    header = ["setting", "folds", *(_HEADERS.get(c, c) for c in columns)]
    rows = []
    for setting, row in table.iterrows():
        cells = [f"{setting}", f"{row['n_folds']} ({row['folds']})"]
        for column in columns:
            cell = _cell(column, row)
            cells.append(f"**{cell}**" if setting in _best(table, column) else cell)
        rows.append(cells)
    by_status = {s: [j for j in report.jobs if j.status == s] for s in ("failed", "unfinished")}
    synthetic = sum(j.synthetic for j in report.jobs)
    title = "# Sweep report"
    if synthetic:
        title += (
            " (SYNTHETIC data)" if synthetic == len(report.jobs) else " (partly SYNTHETIC data)"
        )
    lines = [
        title,
        "",
        *(
            [
                f"{synthetic} of {len(report.jobs)} jobs were trained and tested on a generated "
                "record (the data config's synthetic source, e.g. the phantom): their scores "
                "show that the pipeline learns, not how it does on real scans.",
                "",
            ]
            if synthetic
            else []
        ),
        f"Sources: {', '.join(f'`{s}`' for s in report.sources)}. "
        f"Jobs: {len(report.jobs) - sum(map(len, by_status.values()))} finished, "
        f"{len(by_status['failed'])} failed, {len(by_status['unfinished'])} unfinished.",
        "",
        f"Common to every setting: {', '.join(f'`{c}`' for c in report.common) or 'nothing'}.",
        "A setting is a job's overrides without `data.fold` and without "
        f"{', '.join(f'`{k}`' for k in NOT_A_SETTING)} (where a run is recorded, not what it "
        "trains).",
        "",
        "## Test scores per setting",
        "",
        "Mean ± sample standard deviation (ddof=1) over folds, each fold's best checkpoint "
        "tested on its held-out subjects. **Bold**: best in the column (highest Dice/IoU, "
        "fewest parameters, fastest epoch). `(k)` after a cell: only k folds had a value; "
        "`n/a`: none did (e.g. summaries without a `training` block).",
        "",
        _markdown_table(header, rows),
        "",
        f"![Dice per class]({png_name})",
        "",
        *_comparison_section(report),
        "## Failed and unfinished jobs",
        "",
    ]
    jobs = by_status["failed"] + by_status["unfinished"]
    if jobs:
        job_rows = [
            [j.status, f"`{j.path}`", str(j.fold), " ".join(j.overrides) or "(none)", j.note]
            for j in jobs
        ]
        lines.append(_markdown_table(["status", "job", "fold", "overrides", "note"], job_rows))
    else:
        lines.append("None.")
    lines += _study_section(report)
    return "\n".join(lines) + "\n"


def _study_section(report: Report) -> list[str]:
    lines = []
    for source, trials in report.studies.items():
        header = list(trials.columns)
        rows = [["" if pd.isna(v) else str(v) for v in row] for row in trials.values.tolist()]
        lines += [
            "",
            "## Optuna study",
            "",
            f"`{source}`: study {trials.attrs['study']}, {len(trials)} trials, "
            f"{(trials['state'] == 'COMPLETE').sum()} complete (its state when this report "
            "was written; other processes may still be adding trials).",
            "",
            _markdown_table(header, rows),
        ]
    return lines


def _comparison_section(report: Report) -> list[str]:
    lines = [f"## Paired comparisons ({PAIRED_METRIC})", ""]
    if not report.comparisons:
        return lines + ["No two settings share 2 or more folds: nothing to compare.", ""]
    scope = (
        f"each setting against the best ({len(report.table)} settings > "
        f"{MAX_SETTINGS_FOR_ALL_PAIRS})"
        if report.against_best_only
        else "every pair of settings"
    )
    lines += [
        f"Compared: {scope}, on the folds both finished (at least 2). Difference = first - "
        "second per fold; p = two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon).",
        "",
        "**Caveat:** with n shared folds an exact two-sided Wilcoxon test cannot give a p "
        "below 2/2^n (5 folds: 0.0625, 6: 0.031). With fewer than 6 folds no difference can "
        "reach p < 0.05, however consistent: read a small p with few folds as 'every fold "
        "agrees', and a large one as 'not shown', never as 'no difference'.",
        "",
    ]
    rows = [
        [
            c.first,
            c.second,
            ", ".join(f"{f}: {d:+.3f}" for f, d in zip(c.folds, c.differences, strict=True)),
            f"{np.mean(c.differences):+.3f}",
            f"{c.p_value:.3g}",
            f"{c.smallest_p:.3g}",
        ]
        for c in report.comparisons
        if not c.not_paired
    ]
    header = ["first", "second", "difference per fold", "mean", "p", "smallest possible p"]
    lines += [_markdown_table(header, rows), ""] if rows else []
    unpaired = [c for c in report.comparisons if c.not_paired]
    if unpaired:
        lines += ["Not compared (no p-value):", ""]
        lines += [f"- {c.first} vs {c.second}: {c.not_paired}" for c in unpaired]
        lines.append("")
    return lines


def _cell(column: str, row: pd.Series) -> str:
    mean, std, n = row[f"{column}_mean"], row[f"{column}_std"], row[f"{column}_n"]
    if n == 0:
        return "n/a"
    fmt = _FORMATS.get(column, ".3f")
    cell = f"{mean:{fmt}}" if n == 1 else f"{mean:{fmt}} ± {std:{fmt}}"
    return cell if n == row["n_folds"] else f"{cell} ({n})"


def _best(table: pd.DataFrame, column: str) -> set[str]:
    """The settings with the best mean in ``column`` (ties all count); none when only one."""
    means = table[f"{column}_mean"].dropna()
    if column in _NO_BEST or len(table) < 2 or means.empty:
        return set()
    best = means.min() if column in _LOWER_IS_BETTER else means.max()
    return set(means.index[means == best])


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def plot_scores(report: Report, path: Path) -> None:
    """Grouped bars: per setting, the Dice of each class (one colour each) and their mean,
    with the standard deviation over folds as error bars."""
    bars = [*(f"dice_{c}" for c in report.classes), "dice_mean"]
    names = [*report.classes, "mean"]
    table = report.table
    x = np.arange(len(table))
    width = 0.8 / len(bars)
    # One override per line, long ones (paths) wrapped, so every label fits under its bars.
    labels = ["\n".join(textwrap.fill(part, 28) for part in s.split(", ")) for s in table.index]
    label_lines = max(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(
        figsize=(max(6.0, 1.2 * len(table) * len(bars) / 2), 3.5 + 0.2 * label_lines)
    )
    colours = plt.get_cmap("tab10").colors
    for i, (column, name) in enumerate(zip(bars, names, strict=True)):
        colour = "0.5" if name == "mean" else colours[i % len(colours)]
        ax.bar(
            x + (i - (len(bars) - 1) / 2) * width,
            table[f"{column}_mean"],
            width,
            yerr=table[f"{column}_std"].fillna(0),
            capsize=3,
            color=colour,
            label=name,
        )
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test Dice (mean ± std over folds)")
    ax.legend(ncols=len(bars), loc="upper center", bbox_to_anchor=(0.5, 1.12), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> tuple[list[Path], Path | None, bool]:
    """Directories, plus ``out_dir=`` and ``overwrite=`` in the Hydra-like key=value form."""
    parser = argparse.ArgumentParser(
        prog="python -m src.report",
        description="Compare the settings of Hydra sweeps of src.train.",
    )
    parser.add_argument(
        "args", nargs="+", metavar="DIR | out_dir=DIR | overwrite=true", help="multirun folders"
    )
    dirs, out_dir, overwrite = [], None, False
    for arg in parser.parse_args(argv).args:
        key, _, value = arg.partition("=")
        if key == "out_dir" and value:
            out_dir = Path(value)
        elif key == "overwrite" and value.lower() in ("true", "false"):
            overwrite = value.lower() == "true"
        elif key in ("out_dir", "overwrite"):
            parser.error(f"{arg}: expected out_dir=<folder> or overwrite=true|false")
        elif "=" in arg and not Path(arg).exists():
            parser.error(f"{arg}: unknown option (known: out_dir=, overwrite=)")
        else:
            dirs.append(Path(arg))
    if not dirs:
        parser.error("give at least one multirun folder")
    return dirs, out_dir, overwrite


def main(argv: Sequence[str] | None = None) -> None:
    dirs, out_dir, overwrite = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report = build_report(dirs)
        paths = write_report(report, out_dir or dirs[0], overwrite=overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        sys.exit(f"error: {error}")
    print(f"{len(report.table)} settings; wrote {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
