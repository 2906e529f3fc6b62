"""Pool the folds of the empty-slice sweep: per ``data.drop_empty`` setting, the competition
score and the per-organ Dice over every held-out slice and case-day once.

    python experiments/uwmgi_empty_slices/pool_folds.py <sweep dir> [more] --out DIR [--title T]

Every job folder (``.hydra/overrides.yaml`` and ``checkpoints/summary.json``) is read; its
setting is ``data.drop_empty`` (true/false) and its fold ``data.fold``. Each held-out case-day
is in exactly one fold, so per setting the folds' ``competition.per_case_day`` rows (the score
of ``src.evaluation.uwmgi_metric``) and ``per_image.csv`` rows (per-organ Dice, the project's
empty rule, aggregated with the evaluation's own ``summarize_rows``) are pooled. The mean and
SD over folds of the competition score are reported beside the pooled figures, and the paired
per-case-day difference (drop - keep) with a Wilcoxon signed-rank test. Writes
``report.md`` and ``report.csv`` into ``--out`` (never over existing ones).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml
from scipy.stats import wilcoxon

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from src.data.classes import UWMGI  # noqa: E402
from src.evaluation.evaluate import summarize_rows  # noqa: E402
from src.runs import (  # noqa: E402
    HYDRA_DIR,
    OVERRIDES_YAML,
    checkpoints_dir,
    per_image_path,
    run_summary_path,
)


def read_jobs(sweeps: list[Path]) -> list[dict]:
    """One record per finished job: setting, fold, summary, per-image rows."""
    jobs = []
    for sweep in sweeps:
        for overrides in sorted(sweep.glob(f"**/{HYDRA_DIR}/{OVERRIDES_YAML}")):
            folder = overrides.parent.parent
            summary_path = run_summary_path(folder)
            if not summary_path.is_file():
                print(f"skipped {folder}: no checkpoints/summary.json (unfinished or failed)")
                continue
            values = dict(o.split("=", 1) for o in yaml.safe_load(overrides.read_text()))
            setting = str(values.get("data.drop_empty", "false")).lower()
            summary = json.loads(summary_path.read_text())
            if "competition" not in summary:
                raise ValueError(f"{summary_path} has no competition score: not a UW-Madison run")
            jobs.append(
                {
                    "folder": folder,
                    "drop_empty": setting,
                    "fold": int(values.get("data.fold", 0)),
                    "summary": summary,
                    "rows": pd.read_csv(per_image_path(checkpoints_dir(folder))).to_dict("records"),
                }
            )
    seen: dict[tuple, Path] = {}
    for job in jobs:
        key = (job["drop_empty"], job["fold"])
        if key in seen:
            raise ValueError(f"drop_empty={key[0]} fold {key[1]}: {seen[key]} and {job['folder']}")
        seen[key] = job["folder"]
    if not jobs:
        raise FileNotFoundError(f"no finished job under {[str(s) for s in sweeps]}")
    return jobs


def pooled(jobs: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per setting, the per-case-day competition rows of every job)."""
    case_days = pd.DataFrame(
        [
            {"drop_empty": job["drop_empty"], "fold": job["fold"], **row}
            for job in jobs
            for row in job["summary"]["competition"]["per_case_day"]
        ]
    )
    table = []
    for setting in sorted({job["drop_empty"] for job in jobs}):
        mine = [job for job in jobs if job["drop_empty"] == setting]
        rows = [row for job in mine for row in job["rows"]]
        summary = summarize_rows(rows, UWMGI.names)
        fold_scores = pd.Series([job["summary"]["competition"]["score"] for job in mine])
        days = case_days[case_days["drop_empty"] == setting]
        table.append(
            {
                "drop_empty": setting,
                "folds": len(mine),
                "slices": len(rows),
                "case_days": days["case_day"].nunique(),
                "competition_score": days["score"].mean(),
                "competition_score_fold_mean": fold_scores.mean(),
                "competition_score_fold_sd": fold_scores.std(ddof=1),
                "competition_dice_2d": days["dice"].mean(),
                "competition_hausdorff_3d": days["hausdorff"].mean(),
                "dice_mean": summary["metrics"]["dice_mean"],
                **{f"dice_{n}": summary["metrics"][f"dice_{n}"] for n in UWMGI.foreground},
                # Slices with no organ predicted where there is none / with a false organ.
                **{
                    f"spurious_{n}": summary["per_class"][n]["counts"]["prediction_only"]
                    for n in UWMGI.foreground
                },
            }
        )
    return pd.DataFrame(table), case_days


def paired(case_days: pd.DataFrame) -> dict | None:
    """drop - keep per (case-day, organ), where both settings scored it."""
    wide = case_days.pivot_table(index=["case_day", "class"], columns="drop_empty", values="score")
    if not {"true", "false"} <= set(wide.columns):
        return None
    both = wide[["true", "false"]].dropna()
    difference = both["true"] - both["false"]
    test = wilcoxon(both["true"], both["false"]) if (difference != 0).any() else None
    return {
        "pairs": len(both),
        "mean_difference": float(difference.mean()),
        "wilcoxon_p": float(test.pvalue) if test is not None else None,
    }


def markdown_table(table: pd.DataFrame) -> list[str]:
    """A GitHub table, floats to 4 decimals (pandas' to_markdown needs tabulate)."""

    def cell(value) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return lines


def write_report(out: Path, table: pd.DataFrame, comparison: dict | None, title: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    report_md, report_csv = out / "report.md", out / "report.csv"
    for path in (report_md, report_csv):
        if path.exists():
            raise FileExistsError(f"{path} exists; choose another --out")
    table.to_csv(report_csv, index=False, float_format="%.4f")
    shown = ["drop_empty", "folds", "slices", "case_days", "competition_score"]
    shown += ["competition_score_fold_mean", "competition_score_fold_sd"]
    shown += ["competition_dice_2d", "competition_hausdorff_3d", "dice_mean"]
    shown += [f"dice_{n}" for n in UWMGI.foreground]
    lines = [f"# {title}", "", *markdown_table(table[shown]), ""]
    if comparison is not None:
        p = comparison["wilcoxon_p"]
        lines += [
            f"Paired per (case-day, organ), drop - keep: mean difference of the competition "
            f"score {comparison['mean_difference']:+.4f} over {comparison['pairs']} pairs "
            f"(Wilcoxon p = {'n/a' if p is None else f'{p:.3g}'}).",
            "",
        ]
    lines += [
        "competition_score: pooled over every held-out case-day and organ (0.4 x 2D Dice + "
        "0.6 x (1 - normalised 3D Hausdorff), src/evaluation/uwmgi_metric.py); "
        "dice_*: per-slice Dice with the project's empty rule, pooled over the folds.",
        "",
    ]
    report_md.write_text("\n".join(lines))
    return report_md


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="UW-Madison GI: keeping vs dropping empty slices")
    args = parser.parse_args(argv)
    table, case_days = pooled(read_jobs(args.sweeps))
    path = write_report(args.out, table, paired(case_days), args.title)
    print(path.read_text())
    return table


if __name__ == "__main__":
    main()
