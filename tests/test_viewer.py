"""The viewer's non-UI parts: settings, upload checks, the quiz's scoring, run tables, the
launcher's settings and command, and the quiz markers in src.visualize."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from src.biometry import measure_biometry
from src.data.classes import FETAL_HEAD
from src.runs import find_summaries
from src.viewer import APP, streamlit_command, viewer_settings
from src.viewer_app.run_records import (
    class_distribution,
    families,
    join_runs,
    list_runs,
    load_run,
    metric_columns,
    per_class_table,
    worst_first,
)
from src.viewer_app.scan import (
    biometry_table,
    class_dice,
    click_grid,
    clicked_point,
    index_row,
    legend_html,
    next_structure,
    present_structures,
    read_upload,
    scan_problem,
    score_guesses,
    without_classes,
)
from src.viewer_app.settings import Inference, ViewerSettings
from src.visualize import draw_markers

ROOT = Path(__file__).resolve().parents[1]
NAMES = FETAL_HEAD.names


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _scan(shape=(66, 96)) -> np.ndarray:
    """A grey scan-like image: a speckled gradient."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(20, 200, shape[1])[None, :] + rng.normal(0, 10, shape)
    return np.clip(gradient, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- settings


def test_settings_go_through_json_and_their_absence_is_explained():
    settings = ViewerSettings(
        model=Inference(("/m.ckpt",), tta_flip=True, rules={"brain": ["fill_holes"]}),
        run_dir="/run",
        compare_dirs=("/a", "/b"),
        prepared_dir="/prepared",
        data_class_names=NAMES,
    )
    assert ViewerSettings.from_json(settings.to_json()) == settings
    with pytest.raises(ValueError, match="python -m src.viewer ckpt_path="):
        ViewerSettings.from_json(None)
    with pytest.raises(ValueError, match="no valid viewer settings"):
        ViewerSettings.from_json('{"run_dir": "/run"}')


def test_launcher_settings_are_absolute_and_name_the_prepared_data(
    tiny_data, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    overrides = [o for o in tiny_data if o.startswith("data.")]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "viewer",
            [
                "ckpt_path=model.ckpt",
                "run_dir=runs/a",
                "compare=[runs/a,runs/b]",
                "postprocess={brain: [fill_holes]}",
                *overrides,
            ],
        )
        uploads_only = compose("viewer", ["ckpt_path=model.ckpt", "data_images=false"])
    settings = viewer_settings(cfg)
    assert settings.model.ckpt_paths == (str(tmp_path / "model.ckpt"),)
    assert settings.model.rules == {"brain": ["fill_holes"]}
    assert settings.run_dir == str(tmp_path / "runs" / "a")
    assert settings.compare_dirs == (str(tmp_path / "runs/a"), str(tmp_path / "runs/b"))
    assert (Path(settings.prepared_dir) / "index.csv").is_file()
    assert settings.data_class_names == NAMES
    assert viewer_settings(uploads_only).prepared_dir is None


def test_streamlit_command_runs_the_app_headless_on_the_given_port():
    command = streamlit_command(8765, "127.0.0.1")
    assert command[1:5] == ["-m", "streamlit", "run", str(APP)]
    assert "--server.port=8765" in command and "--server.headless=true" in command
    assert APP.is_file()


# ---------------------------------------------------------------------------- uploads


def test_a_grey_scan_is_read_and_bad_uploads_are_named():
    scan = _scan()
    assert np.array_equal(read_upload("scan.png", _png(scan)), scan)
    colour = cv2.cvtColor(scan, cv2.COLOR_GRAY2BGR)
    colour[:, :40] = (0, 0, 255)  # a large red area
    mask = np.zeros((66, 96), np.uint8)
    mask[10:40, 20:60] = 1
    cases = {
        "photo.png": (_png(colour), "a colour picture"),
        "mask.png": (_png(mask), "2 grey level"),
        "icon.png": (_png(scan[:16, :16]), "too small"),
        "broken.png": (b"\x89PNG\r\n\x1a\n not really", "cannot be decoded"),
        "notes.txt": (b"hello", "not an image file"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(ValueError, match=message) as error:
            read_upload(name, data)
        assert str(error.value).startswith(name)


def test_a_grey_scan_saved_as_colour_with_a_small_mark_is_a_scan():
    colour = cv2.cvtColor(_scan(), cv2.COLOR_GRAY2BGR)
    colour[2:6, 2:10] = (0, 255, 255)  # a yellow caliper mark
    assert scan_problem(colour) is None


# ---------------------------------------------------------------------------- one scan


def _head_mask() -> np.ndarray:
    labels = np.zeros((66, 96), dtype=np.uint8)
    cv2.ellipse(labels, (48, 33), (30, 20), 0, 0, 360, 1, -1)
    labels[30:36, 45:51] = 2
    return labels


def test_hidden_classes_are_shown_as_background():
    labels = _head_mask()
    hidden = without_classes(labels, [2])
    assert set(np.unique(hidden)) == {0, 1} and hidden.dtype == labels.dtype
    assert np.array_equal(hidden[labels == 1], labels[labels == 1])


def test_class_dice_and_biometry_tables():
    truth = _head_mask()
    predicted = truth.copy()
    predicted[predicted == 2] = 1  # CSP missed
    dice = class_dice(predicted, truth, NAMES).set_index("class")
    assert dice.loc["brain", "Dice"] > 0.9 and dice.loc["csp", "Dice"] == 0
    assert math.isnan(dice.loc["lv", "Dice"])  # in neither: left out, as in the evaluation
    assert not dice.loc["csp", "predicted"] and dice.loc["csp", "in truth"]

    table = biometry_table(measure_biometry(predicted, 0.5), measure_biometry(truth, 0.5))
    assert list(table.index) == ["HC", "BPD", "OFD", "CSP width", "LV width"]
    assert (table["units"] == "mm").all()
    assert table.loc["BPD", "truth"] == pytest.approx(20.5, abs=1.0)  # 2 x 20 px x 0.5 mm
    assert math.isnan(table.loc["CSP width", "prediction"]) and table.loc["CSP width", "truth"] > 0
    assert list(biometry_table(None).columns) == ["prediction", "units"]


def test_legend_names_every_foreground_class_in_its_colour():
    html = legend_html(NAMES, FETAL_HEAD.display_colours)
    for name, colour in zip(NAMES[1:], FETAL_HEAD.display_colours[1:], strict=True):
        assert name in html and f"rgb{colour}" in html
    assert "> background" not in html


# ---------------------------------------------------------------------------- quiz


def test_a_click_on_the_quiz_chart_is_a_point_in_image_pixels():
    grid = click_grid(96, 66, cells=8)
    assert grid["x"].between(0, 96).all() and grid["y"].between(0, 66).all()
    assert len(grid) == 8 * 5  # 12 px cells: 8 across, 5 down (centres 6 to 54)
    assert clicked_point({"click": [{"x": 10.5, "y": 3}]}, "click") == (10.5, 3.0)
    assert clicked_point({"click": []}, "click") is None
    assert clicked_point(None, "click") is None


def test_the_quiz_asks_for_present_structures_in_order_and_scores_the_clicks():
    reference = _head_mask()
    structures = present_structures(reference, NAMES)
    assert structures == ["brain", "csp"]
    assert next_structure(structures, {"brain": (1, 1)}) == "csp"
    assert next_structure(structures, {"brain": (1, 1), "csp": (2, 2)}) is None

    guesses = {"brain": (48.0, 20.0), "csp": (48.0, 10.0)}  # brain inside; csp 20 px above
    scores = score_guesses(guesses, reference, NAMES, 0.5).set_index("structure")
    assert scores.loc["brain", "inside"] and scores.loc["brain", "distance (mm)"] == 0
    assert not scores.loc["csp", "inside"]
    assert scores.loc["csp", "distance (mm)"] == pytest.approx(20 * 0.5)
    in_pixels = score_guesses({"lv": (5.0, 5.0)}, reference, NAMES, None)
    assert list(in_pixels.columns) == ["structure", "inside", "distance (px)"]
    assert math.isnan(in_pixels.loc[0, "distance (px)"])  # nothing to be near


def test_quiz_markers_are_drawn_at_the_clicks_in_their_colours():
    rgb = np.zeros((66, 96, 3), np.uint8)
    draw_markers(rgb, [(20, 30), (70, 30)], [(230, 60, 60), (60, 200, 90)])
    assert tuple(rgb[30, 20]) == (230, 60, 60) and tuple(rgb[30, 70]) == (60, 200, 90)
    assert not rgb[5:10, 40:50].any()


# ---------------------------------------------------------------------------- runs


def _summary(dice: dict[str, list[float]], checkpoint: str = "/gone/model.ckpt", **extra) -> dict:
    ids = [f"images/p/{i}.png" for i in range(len(next(iter(dice.values()))))]
    rows = [
        {"id": image_id, "plane": "p", **{f"dice_{c}": v[i] for c, v in dice.items()}}
        for i, image_id in enumerate(ids)
    ]
    return {
        "checkpoint": checkpoint,
        "classes": list(dice),
        "mean": {"dice_mean": 0.5, "iou_mean": 0.4},
        "per_class": {
            c: {"dice": float(np.nanmean(np.array(v, float))), "iou": 0.3} for c, v in dice.items()
        },
        "per_image": rows,
        "per_stratum": {"column": "plane", "groups": {}},
        **extra,
    }


def _write(folder: Path, summary: dict, name: str = "summary.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(summary))
    return path


def test_runs_are_found_in_eval_or_training_folders_and_bad_ones_named(tmp_path):
    evaluated = _write(tmp_path / "eval", _summary({"brain": [0.9, 0.1]}))
    trained = _write(tmp_path / "run" / "checkpoints", _summary({"brain": [0.9]}))
    assert find_summaries(tmp_path / "eval") == [evaluated]
    assert find_summaries(tmp_path / "run") == [trained]
    with pytest.raises(FileNotFoundError, match="no such folder"):
        find_summaries(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        find_summaries(tmp_path / "empty")
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(broken)
    with pytest.raises(ValueError, match="no per_image"):
        load_run(_write(tmp_path / "old", {"classes": [], "per_class": {}}))


def test_a_run_record_knows_how_its_evaluation_predicted(tmp_path):
    summary = _summary(
        {"brain": [0.9, 0.1], "csp": [None, 0.5]},
        settings={"tta_flip": True, "robust_biometry": False},
        postprocess={"mode": "auto", "rules": {"brain": ["fill_holes"]}},
    )
    path = _write(tmp_path / "eval", summary)
    (tmp_path / "eval" / "model.ckpt").write_bytes(b"")  # moved here since
    record = load_run(path)
    assert record.class_names == ("background", "brain", "csp")
    assert record.stratum_column == "plane"
    assert record.table["dice_mean"].tolist() == pytest.approx([0.9, 0.3])
    inference = record.inference()
    assert inference.ckpt_paths == (str(tmp_path / "eval" / "model.ckpt"),)
    assert inference.tta_flip and inference.rules == {"brain": ["fill_holes"]}


def test_worst_first_by_any_metric():
    table = pd.DataFrame(
        {
            "id": list("abcd"),
            "dice_brain": [0.9, np.nan, 0.2, 0.5],
            "hd95_px_brain": [1.0, 9.0, np.nan, 3.0],
            "hc_diff": [-8.0, 2.0, 5.0, np.nan],
            "orig_width": [96] * 4,
        }
    )
    assert list(worst_first(table, "dice_brain")["id"]) == list("cdab")
    assert list(worst_first(table, "hd95_px_brain")["id"]) == list("bdac")
    assert list(worst_first(table, "hc_diff")["id"]) == list("acbd")
    assert metric_columns(table) == ["dice_brain", "hd95_px_brain", "hc_diff"]


def test_distributions_and_the_per_class_table(tmp_path):
    record = load_run(_write(tmp_path / "e", _summary({"brain": [0.9, 0.8], "csp": [np.nan, 0.5]})))
    long = class_distribution(record.table, "dice", record.class_names)
    assert long.groupby("class").size().to_dict() == {"brain": 2, "csp": 1}
    assert families(record.table, record.class_names) == ["dice"]
    table = per_class_table({"A": record, "B": record})
    assert list(table.index) == ["brain", "csp", "mean"]
    assert list(table.columns) == ["Dice · A", "IoU · A", "Dice · B", "IoU · B"]
    assert table.loc["brain", "Dice · A"] == pytest.approx(0.85)


def test_two_runs_are_joined_on_their_common_images_largest_change_first(tmp_path):
    first = load_run(_write(tmp_path / "a", _summary({"brain": [0.9, 0.5, 0.7]})))
    second = load_run(_write(tmp_path / "b", _summary({"brain": [0.8, 0.9]})))
    joined = join_runs(first, second)
    assert list(joined["id"]) == ["images/p/1.png", "images/p/0.png"]
    assert joined["change"].tolist() == pytest.approx([0.4, -0.1])
    other = load_run(_write(tmp_path / "c", _summary({"head": [0.9]})))
    with pytest.raises(ValueError, match="different classes"):
        join_runs(first, other)


def _job(sweep: Path, number: int, overrides: list[str]) -> None:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    _write(job / "checkpoints", _summary({"brain": [0.5]}))


def test_a_sweep_lists_its_jobs_fold_by_fold_labelled_by_what_differs(tmp_path):
    sweep = tmp_path / "sweep"
    _job(sweep, 0, ["+experiment=unet_dice_cpu", "loss=dice", "data.fold=1"])
    _job(sweep, 1, ["+experiment=unet_dice_cpu", "loss=ce", "data.fold=0"])
    _job(sweep, 2, ["+experiment=unet_dice_cpu", "loss=dice", "data.fold=0"])
    runs, problems = list_runs([sweep, tmp_path / "missing"])
    assert list(runs) == ["1 (loss=ce, fold 0)", "2 (loss=dice, fold 0)", "0 (loss=dice, fold 1)"]
    assert runs["1 (loss=ce, fold 0)"] == sweep / "1" / "checkpoints" / "summary.json"
    assert len(problems) == 1 and "missing: no such folder" in problems[0]
    single, _ = list_runs([sweep / "2"])
    assert list(single) == ["2 (experiment=unet_dice_cpu, loss=dice, fold 0)"]


def test_an_image_of_other_data_is_named():
    index = pd.DataFrame({"image": ["images/a.png"], "pixel_size_mm": [0.1]})
    assert index_row(index, "images/a.png")["pixel_size_mm"] == 0.1
    with pytest.raises(ValueError, match="images/b.png is not in the prepared data"):
        index_row(index, "images/b.png")
