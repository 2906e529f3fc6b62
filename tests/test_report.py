"""The sweep comparison report on hand-made multirun folders (no training)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy.stats import wilcoxon

from src.report import build_report, main, render_markdown, write_report

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["brain", "csp", "lv"]


def summary(dice: dict[str, float], *, training: dict | None = None, classes=CLASSES) -> dict:
    """A summary.json as src.train writes it; IoU = Dice / 2 to tell the two apart."""
    per_class = {c: {"dice": dice[c], "iou": dice[c] / 2} for c in classes}
    mean = sum(dice[c] for c in classes) / len(classes)
    record = {
        "checkpoint": "checkpoints/epoch_003.ckpt",
        "num_images": 4,
        "classes": classes,
        "empty_mask_rule": "absent in both: NaN",
        "mean": {"dice_mean": mean, "iou_mean": mean / 2},
        "per_class": per_class,
        "per_image": [],
    }
    if training is not None:
        record["training"] = training
    return record


def make_job(
    sweep: Path,
    num: int,
    overrides: list[str],
    *,
    result: dict | None = None,
    log: str = "",
    failed_marker: bool = False,
) -> Path:
    """One Hydra job folder: .hydra/overrides.yaml, config, log and (if finished) summary."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text("data:\n  fold: 0\n")
    (job / "train.log").write_text(log)
    if failed_marker:
        (job / "FAILED").touch()
    if result is not None:
        (job / "config_resolved.yaml").write_text("data:\n  fold: 0\n")
        # The split as src.train writes it: the same for the same fold and data.seed.
        values = dict(o.split("=", 1) for o in overrides if "=" in o)
        split = {"fold": values.get("data.fold", "0"), "seed": values.get("data.seed", "0")}
        (job / "splits.json").write_text(json.dumps(split))
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "summary.json").write_text(json.dumps(result))
    return job


def dice(brain: float, csp: float, lv: float) -> dict[str, float]:
    return {"brain": brain, "csp": csp, "lv": lv}


# Two swept keys (loss, model) x two folds; brain Dice per (setting, fold) chosen by hand.
BRAIN = {
    ("dice", "unet"): (0.90, 0.80),
    ("dice", "smp_unet"): (0.70, 0.74),
    ("ce", "unet"): (0.60, 0.60),
    ("ce", "smp_unet"): (0.95, 0.85),
}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "train" / "2026-11-22" / "10-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: [loss=dice,ce]\n")
    num = 0
    for (loss, model), values in BRAIN.items():
        for fold, brain in enumerate(values):
            overrides = ["+experiment=unet_dice_cpu", f"loss={loss}", f"model={model}"]
            overrides += [f"data.fold={fold}", f"hydra.run.dir=/somewhere/{num}"]
            training = {"num_parameters": 1000 + 10 * fold, "seconds_per_epoch": 2.0 + fold}
            training["best_epoch"] = 3 + 2 * fold
            result = summary(dice(brain, 0.5, 0.2), training=training)
            make_job(root, num, overrides, result=result)
            num += 1
    return root


def test_two_by_two_settings_two_folds(sweep: Path, tmp_path: Path) -> None:
    report = build_report([sweep])
    write_report(report, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "report.csv", index_col="setting")

    assert len(table) == 4
    assert report.common == ["experiment=unet_dice_cpu"]
    row = table.loc["loss=dice, model=unet"]
    assert row["n_folds"] == 2
    assert row["folds"] == "0,1"
    assert row["dice_brain_mean"] == pytest.approx(0.85)
    assert row["dice_brain_std"] == pytest.approx(math.sqrt(2 * 0.05**2))  # ddof=1
    assert row["iou_brain_mean"] == pytest.approx(0.425)
    assert row["dice_csp_std"] == pytest.approx(0.0)
    assert row["dice_mean_mean"] == pytest.approx((0.85 + 0.5 + 0.2) / 3)
    assert row["num_parameters_mean"] == pytest.approx(1005)
    assert row["seconds_per_epoch_std"] == pytest.approx(math.sqrt(0.5))
    assert row["best_epoch_mean"] == pytest.approx(4)
    assert table.loc["loss=ce, model=unet", "dice_brain_std"] == pytest.approx(0.0)

    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| loss=dice, model=unet | 2 (0,1) | 0.517 ± 0.024 |" in markdown
    assert "**0.900 ± 0.071**" in markdown  # best brain Dice: loss=ce, model=smp_unet
    assert "**1,005 ± 7**" in markdown  # all settings tie on parameters: all bold
    assert "hydra.run.dir" not in markdown  # not a setting, so neither a label nor common


def test_failed_and_unfinished_jobs_are_listed(sweep: Path, tmp_path: Path) -> None:
    make_job(sweep, 10, ["loss=focal", "data.fold=0"], log="...\nERROR Run failed\nTraceback")
    make_job(sweep, 11, ["loss=focal", "data.fold=1"], log="epoch 3 ...")
    make_job(sweep, 12, ["loss=tversky", "data.fold=0"], failed_marker=True)

    report = build_report([sweep])
    status = {job.path.name: job.status for job in report.jobs}
    assert (status["10"], status["11"], status["12"]) == ("failed", "unfinished", "failed")
    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "4 failed" not in markdown and "2 failed, 1 unfinished" in markdown
    failures = markdown.split("## Failed and unfinished jobs")[1]
    assert f"| failed | `{sweep.resolve() / '10'}` | 0 | loss=focal data.fold=0 |" in failures
    assert f"| unfinished | `{sweep.resolve() / '11'}` | 1 | loss=focal data.fold=1 |" in failures
    assert "loss=tversky data.fold=0" in failures


def test_folder_without_jobs_or_finished_jobs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no Hydra job folder .*overrides\.yaml"):
        build_report([tmp_path])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        build_report([tmp_path / "missing"])
    make_job(tmp_path, 0, ["loss=dice"], log="Run failed")
    with pytest.raises(ValueError, match=r"no finished job[\s\S]*failed: .*0"):
        build_report([tmp_path])


def test_bad_job_files_are_named(tmp_path: Path) -> None:
    job = make_job(tmp_path, 0, ["loss=dice"], result={"classes": ["brain"], "mean": {}})
    with pytest.raises(ValueError, match=r"summary\.json: no 'per_class' key"):
        build_report([tmp_path])
    (job / ".hydra" / "overrides.yaml").write_text("loss: dice\n")
    with pytest.raises(ValueError, match=r"0/\.hydra/overrides\.yaml: expected a list"):
        build_report([tmp_path])


def test_class_names_come_from_the_summary(tmp_path: Path) -> None:
    classes = ["liver", "kidney"]
    for fold in (0, 1):
        result = summary({"liver": 0.9, "kidney": 0.4 + fold / 10}, classes=classes)
        make_job(tmp_path, fold, ["model=unet", f"data.fold={fold}"], result=result)

    report = build_report([tmp_path])
    write_report(report, tmp_path)
    table = pd.read_csv(tmp_path / "report.csv", index_col="setting")
    assert report.classes == classes
    assert table["dice_kidney_mean"].item() == pytest.approx(0.45)
    assert not any("brain" in column for column in table.columns)
    header = (tmp_path / "report.md").read_text().split("## Test scores per setting")[1]
    assert "dice_liver" in header and "iou_kidney" in header


def test_missing_training_block_shows_na(tmp_path: Path) -> None:
    make_job(tmp_path, 0, ["data.fold=0"], result=summary(dice(0.9, 0.5, 0.2)))
    write_report(build_report([tmp_path]), tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "| n/a | n/a | n/a |" in markdown


def test_png_is_a_valid_image(sweep: Path, tmp_path: Path) -> None:
    write_report(build_report([sweep]), tmp_path)
    with Image.open(tmp_path / "report.png") as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100
        image.verify()


def test_paired_p_value_equals_scipys(tmp_path: Path) -> None:
    first = [0.80, 0.75, 0.90, 0.70, 0.85, 0.78]
    second = [0.70, 0.76, 0.82, 0.67, 0.80, 0.60]
    for fold, (a, b) in enumerate(zip(first, second, strict=True)):
        make_job(tmp_path, 2 * fold, ["loss=dice", f"data.fold={fold}"], result=_brain_only(a))
        make_job(tmp_path, 2 * fold + 1, ["loss=ce", f"data.fold={fold}"], result=_brain_only(b))

    report = build_report([tmp_path])
    [comparison] = report.comparisons
    assert {comparison.first, comparison.second} == {"loss=dice", "loss=ce"}
    sign = 1 if comparison.first == "loss=dice" else -1
    expected = [sign * (a - b) for a, b in zip(first, second, strict=True)]
    assert comparison.differences == pytest.approx(expected)
    assert comparison.p_value == pytest.approx(wilcoxon(first, second).pvalue)
    assert comparison.p_value == pytest.approx(4 / 64)  # exact: one negative difference, of rank 1
    assert comparison.smallest_p == pytest.approx(2 / 64)
    write_report(report, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "cannot give a p below 2/2^n (5 folds: 0.0625" in markdown
    assert "| 0.0625 | 0.0312 |" in markdown


def test_many_settings_are_compared_with_the_best_only(tmp_path: Path) -> None:
    for setting in range(6):
        for fold in (0, 1):
            result = _brain_only(0.5 + setting / 20 + fold / 100)
            make_job(
                tmp_path,
                2 * setting + fold,
                [f"seed={setting}", f"data.fold={fold}"],
                result=result,
            )

    report = build_report([tmp_path])
    assert report.against_best_only
    assert len(report.comparisons) == 5
    assert all(c.first == "seed=5" for c in report.comparisons)


def test_existing_report_is_never_overwritten_silently(sweep: Path) -> None:
    report = build_report([sweep])
    write_report(report, sweep)
    (sweep / "report.md").write_text("kept")
    with pytest.raises(FileExistsError, match="overwrite=true"):
        write_report(report, sweep)
    assert (sweep / "report.md").read_text() == "kept"
    write_report(report, sweep, overwrite=True)
    assert (sweep / "report.md").read_text().startswith("# Sweep report")


def test_several_sweeps_and_duplicate_folds(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    make_job(first, 0, ["loss=dice", "data.fold=0"], result=_brain_only(0.8))
    make_job(first, 1, ["loss=dice", "data.fold=1"], log="Run failed")
    make_job(second, 0, ["+loss=dice", "data.fold=1"], result=_brain_only(0.6))

    report = build_report([first, second])
    assert report.table.loc["loss=dice", "n_folds"] == 2
    [failed] = [job for job in report.jobs if job.status == "failed"]
    assert failed.note == f"finished in {(second / '0').resolve()}"

    make_job(second, 1, ["loss=dice", "data.fold=0"], result=_brain_only(0.7))
    with pytest.raises(ValueError, match="fold 0 finished twice"):
        build_report([first, second])


def test_fold_from_the_config_when_not_overridden(tmp_path: Path) -> None:
    job = make_job(tmp_path, 0, ["loss=dice"], result=_brain_only(0.8))
    (job / "config_resolved.yaml").write_text("data:\n  fold: 3\n")
    make_job(tmp_path, 1, ["loss=dice"], result=_brain_only(0.7))
    assert build_report([tmp_path]).table.loc["loss=dice", "folds"] == "0,3"


def test_command_line(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    main([str(sweep), f"out_dir={out}"])
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.md", "report.png"]
    with pytest.raises(SystemExit, match="already exist"):
        main([str(sweep), f"out_dir={out}"])
    with pytest.raises(SystemExit):
        main([str(sweep), "colour=red"])


@pytest.mark.slow  # a fresh interpreter importing pandas, scipy, matplotlib, Hydra
def test_module_entry_point(sweep: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "src.report", str(sweep)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (sweep / "report.md").is_file()
    assert "4 settings" in result.stdout


def _brain_only(value: float) -> dict:
    return summary({"brain": value}, classes=["brain"])


def test_settings_split_differently_are_not_paired(tmp_path: Path) -> None:
    """data.seed=0 against data.seed=1: fold k of each holds other test images, so the folds
    are no pairs: no p-value, and the report says why."""
    for num, (seed, fold, brain) in enumerate(
        [(0, 0, 0.90), (0, 1, 0.91), (0, 2, 0.92), (1, 0, 0.80), (1, 1, 0.81), (1, 2, 0.82)]
    ):
        make_job(
            tmp_path,
            num,
            [f"data.seed={seed}", f"data.fold={fold}"],
            result=summary(dice(brain, brain, brain)),
        )
    report = build_report([tmp_path])
    (comparison,) = report.comparisons
    assert comparison.not_paired and math.isnan(comparison.p_value)
    text = render_markdown(report, "report.png")
    assert "Not compared (no p-value)" in text and "split differently" in text


def test_a_fast_dev_run_job_with_its_summary_at_the_root_is_finished(tmp_path: Path) -> None:
    """trainer.fast_dev_run saves no checkpoint: the test's summary.json is at the run root."""
    job = make_job(tmp_path, 0, ["data.fold=0"], result=summary(dice(0.9, 0.8, 0.7)))
    (job / "checkpoints" / "summary.json").rename(job / "summary.json")
    (job / "checkpoints").rmdir()
    report = build_report([tmp_path])
    assert [j.status for j in report.jobs] == ["finished"] and len(report.table) == 1


def test_a_report_on_synthetic_data_says_so_in_its_title(tmp_path: Path) -> None:
    job = make_job(tmp_path, 0, ["data.fold=0"], result=summary(dice(0.9, 0.8, 0.7)))
    phantom = tmp_path / "phantom"
    (job / "config_resolved.yaml").write_text(
        yaml.safe_dump({"data": {"root": str(phantom), "synthetic": {"root": str(phantom)}}})
    )
    real = make_job(tmp_path, 1, ["data.fold=1"], result=summary(dice(0.9, 0.8, 0.7)))
    assert not read_job_synthetic(real)
    text = render_markdown(build_report([tmp_path]), "report.png")
    assert text.startswith("# Sweep report (partly SYNTHETIC data)")
    assert "1 of 2 jobs were trained and tested on a generated record" in text


def read_job_synthetic(job: Path) -> bool:
    from src.runs import read_job

    return read_job(job).synthetic
