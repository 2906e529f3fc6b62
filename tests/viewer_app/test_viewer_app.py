"""The viewer's pages under Streamlit's AppTest (no browser): each page with a tiny
checkpoint trained in the test and two evaluations of it, the upload path, the quiz, and
the messages for bad inputs, which must be shown in the page, never as a traceback. Last,
marked slow: the same pages served by ``python -m src.viewer`` and loaded in headless
Chromium (``make viewer-check``)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from src.data.classes import FETAL_HEAD
from src.data.prepared import read_index, read_original
from src.ellipse import ramanujan_circumference
from src.eval import evaluate_checkpoint
from src.export import export
from src.inference.checkpoint import checkpoint_payload
from src.viewer import viewer_settings
from src.viewer_app import timing
from src.viewer_app.scan import index_row, present_structures
from src.viewer_app.settings import SETTINGS_ENV, Inference, ViewerSettings

pytest.importorskip("streamlit", reason="the viewer's extra: pip install -e '.[viewer]'")
from streamlit.testing.v1 import AppTest  # noqa: E402

from src.viewer_app.browser import Browser, find_chromium  # noqa: E402  (websockets)

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "src" / "viewer_app" / "app.py"
SCAN_SIZE = (64, 96)  # height, width of the uploaded scans
AXES = (36, 22)  # semi-axes (px) of the bright head in them


@pytest.fixture(scope="module")
def data_overrides(tiny_data) -> list[str]:
    return [o for o in tiny_data if o.startswith("data.")]


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_trained_run) -> Path:
    return tiny_trained_run / "checkpoints" / "epoch_000.ckpt"


@pytest.fixture(scope="module")
def runs(tiny_ckpt, data_overrides, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny checkpoint evaluated twice (without and with flip TTA), as src.eval does."""
    out = tmp_path_factory.mktemp("viewer-runs")
    for name, tta in (("plain", "false"), ("flipped", "true")):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "eval",
                [
                    f"ckpt_path={tiny_ckpt}",
                    *data_overrides,
                    f"tta={tta}",
                    "postprocess=none",
                    f"out_dir={out / name}",
                    f"paths.output_dir={out / name}",
                ],
            )
        evaluate_checkpoint(cfg)
    return out / "plain", out / "flipped"


def _settings(ckpt: Path, runs: tuple[Path, Path], data_overrides: list[str]) -> str:
    """The settings ``python -m src.viewer`` would hand the app, as JSON."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "viewer",
            [
                f"ckpt_path={ckpt}",
                f"run_dir={runs[0]}",
                f"compare=[{runs[0]},{runs[1]}]",
                *data_overrides,
            ],
        )
    return viewer_settings(cfg).to_json()


@pytest.fixture(scope="module")
def settings_json(tiny_ckpt, runs, data_overrides) -> str:
    return _settings(tiny_ckpt, runs, data_overrides)


@pytest.fixture(scope="module")
def bright_ckpt(tmp_path_factory) -> Path:
    """A Conv2d(1, 4, 1) that calls brain every pixel brighter than half-scale: its head is
    the ellipse drawn into the scan, so its HC is known."""
    config = {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 1}
    weight = torch.zeros(4, 1, 1, 1)
    weight[1] = 20.0
    bias = torch.tensor([0.0, -10.0, -100.0, -100.0])
    path = tmp_path_factory.mktemp("bright") / "model.ckpt"
    torch.save(
        {
            "state_dict": {"net.weight": weight, "net.bias": bias},
            "sonoseg": checkpoint_payload(config, FETAL_HEAD.names, (32, 48), 1),
        },
        path,
    )
    return path


def _app(monkeypatch, settings_json: str | None) -> AppTest:
    if settings_json is None:
        monkeypatch.delenv(SETTINGS_ENV, raising=False)
    else:
        monkeypatch.setenv(SETTINGS_ENV, settings_json)
    return AppTest.from_file(str(APP), default_timeout=120)


def _no_traceback(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _errors(at: AppTest) -> str:
    return "\n".join(e.value for e in at.error)


def _scan_png() -> bytes:
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(30, 6, SCAN_SIZE), 0, 255).astype(np.uint8)
    cv2.ellipse(image, (48, 32), AXES, 0, 0, 360, 220, -1)
    return cv2.imencode(".png", image)[1].tobytes()


# ---------------------------------------------------------------------------- Scan


def test_scan_page_shows_a_dataset_image_its_prediction_truth_and_dice(monkeypatch, settings_json):
    at = _app(monkeypatch, settings_json).run()
    _no_traceback(at)
    assert not at.error
    assert at.radio(key="scan_source").value == "Dataset image"
    legend = at.sidebar.markdown[0].value
    assert all(name in legend for name in FETAL_HEAD.names[1:])
    assert [c.label for c in at.sidebar.checkbox] == list(FETAL_HEAD.names[1:])
    assert len(at.image) == 2  # prediction and true outline
    biometry, dice = (table.value for table in at.table)
    assert list(biometry.index[:3]) == ["HC", "BPD", "OFD"] and "truth" in biometry.columns
    assert list(dice.index) == list(FETAL_HEAD.names[1:])
    assert "Predicted in" in at.caption[0].value

    # Toggles and opacity redraw the same page.
    at.sidebar.checkbox(key="show:brain").uncheck()
    at.sidebar.slider(key="opacity").set_value(0.8)
    at.run()
    _no_traceback(at)
    assert len(at.image) == 2


def test_an_uploaded_scan_is_measured_in_mm_with_a_typed_pixel_size(monkeypatch, bright_ckpt):
    settings = ViewerSettings(model=Inference((str(bright_ckpt),)))
    at = _app(monkeypatch, settings.to_json()).run()
    assert at.radio(key="scan_source").options == ["Upload"]  # no dataset: uploads only
    assert "Upload a grey" in at.info[0].value
    at.file_uploader[0].upload("scan.png", _scan_png(), "image/png")
    at.run()
    _no_traceback(at)
    assert at.metric[0].label == "HC" and at.metric[0].value.endswith(" px")
    at.number_input[0].set_value(0.5)
    at.run()
    expected = ramanujan_circumference(*AXES) * 0.5
    hc = float(at.metric[0].value.removesuffix(" mm"))
    assert hc == pytest.approx(expected, rel=0.03)
    assert len(at.image) == 1  # no label: no true outline


def test_an_exported_package_measures_an_uploaded_scan(monkeypatch, bright_ckpt, tmp_path):
    package = tmp_path / "package"
    export(bright_ckpt, package, postprocess=None)
    at = _app(monkeypatch, ViewerSettings(model=Inference((str(package),))).to_json()).run()
    _no_traceback(at)
    at.file_uploader[0].upload("scan.png", _scan_png(), "image/png")
    at.run()
    _no_traceback(at)
    at.number_input[0].set_value(0.5)
    at.run()
    hc = float(at.metric[0].value.removesuffix(" mm"))
    assert hc == pytest.approx(ramanujan_circumference(*AXES) * 0.5, rel=0.03)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("broken.png", b"\x89PNG\r\n\x1a\n not really", "broken.png: cannot be decoded"),
        ("notes.txt", b"hello", "notes.txt: not an image file"),
        ("mask.png", cv2.imencode(".png", np.eye(64, dtype=np.uint8))[1].tobytes(), "grey level"),
        (
            "photo.jpg",
            cv2.imencode(".jpg", np.full((64, 96, 3), (0, 128, 255), np.uint8))[1].tobytes(),
            "a colour picture",
        ),
    ],
)
def test_a_bad_upload_is_named_in_the_page(monkeypatch, bright_ckpt, name, data, message):
    settings = ViewerSettings(model=Inference((str(bright_ckpt),)))
    at = _app(monkeypatch, settings.to_json()).run()
    at.file_uploader[0].upload(name, data, "application/octet-stream")
    at.run()
    _no_traceback(at)
    assert message in _errors(at)
    assert not at.image and not at.metric


def _text_file(path: Path) -> Path:
    path.write_text("not a checkpoint")
    return path


def _lightning_checkpoint_without_payload(path: Path) -> Path:
    torch.save({"state_dict": {"net.weight": torch.zeros(1)}}, path)
    return path


def _three_channel_checkpoint(path: Path) -> Path:
    config = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 1}
    net = torch.nn.Conv2d(3, 4, 1)
    torch.save(
        {
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "sonoseg": checkpoint_payload(config, FETAL_HEAD.names, (32, 48), 3),
        },
        path,
    )
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda folder: folder / "missing.ckpt", "not found"),
        (lambda folder: _text_file(folder / "notes.ckpt"), "not a checkpoint"),
        (
            lambda folder: _lightning_checkpoint_without_payload(folder / "plain.ckpt"),
            "has no 'sonoseg' entry",
        ),
        (lambda folder: _three_channel_checkpoint(folder / "rgb.ckpt"), "3 input channels"),
    ],
)
def test_a_missing_or_incompatible_checkpoint_is_explained(monkeypatch, tmp_path, make, message):
    settings = ViewerSettings(model=Inference((str(make(tmp_path)),)))
    at = _app(monkeypatch, settings.to_json()).run()
    _no_traceback(at)
    assert message in _errors(at)


def test_the_app_without_settings_says_how_to_start_it(monkeypatch):
    at = _app(monkeypatch, None).run()
    _no_traceback(at)
    assert "python -m src.viewer ckpt_path=" in _errors(at)


def test_the_quiz_hides_the_prediction_until_every_structure_is_placed(monkeypatch, settings_json):
    settings = ViewerSettings.from_json(settings_json)
    image_id = read_index(Path(settings.prepared_dir))["image"].iloc[0]
    _, truth = read_original(
        Path(settings.prepared_dir),
        index_row(read_index(Path(settings.prepared_dir)), image_id),
    )
    structures = present_structures(truth, FETAL_HEAD.names)
    image_key = f"data:{image_id}"

    at = _app(monkeypatch, settings_json).run()
    at.sidebar.toggle(key="quiz").set_value(True)
    at.run()
    _no_traceback(at)
    assert at.subheader[0].value == f"Quiz: click where the {structures[0]} is"
    assert not at.image and not at.metric  # nothing given away

    # A click on the chart places the structure asked for.
    at.session_state[f"quiz_chart:{image_key}:0"] = {"selection": {"click": [{"x": 40, "y": 30}]}}
    at.run()
    _no_traceback(at)
    assert at.session_state["quiz_guesses"][image_key] == {structures[0]: (40.0, 30.0)}

    at.session_state["quiz_guesses"] = {image_key: {name: (40.0, 30.0) for name in structures}}
    at.run()
    _no_traceback(at)
    assert at.subheader[0].value == "Quiz: how close you were (to the true outline)"
    scores = at.table[0].value
    assert list(scores.index) == structures and "inside" in scores.columns
    assert len(at.image) == 2 and at.table[1].value.index[0] == "HC"


# ---------------------------------------------------------------------------- Run


def test_run_page_shows_the_evaluation_and_a_row_opens_its_image(monkeypatch, settings_json, runs):
    at = _app(monkeypatch, settings_json).run()
    at.switch_page("views/run.py").run()
    _no_traceback(at)
    assert not at.error
    per_class = at.table[0].value
    assert list(per_class.index) == [*FETAL_HEAD.names[1:], "mean"]
    assert {"Dice", "IoU"} <= set(per_class.columns)
    assert at.selectbox(key="run_sort").value == "dice_mean"
    rows = at.dataframe[0].value
    assert rows["dice_mean"].is_monotonic_increasing  # worst first
    assert at.get("vega_lite_chart")  # the distributions
    assert at.image or "No plot" in at.info[-1].value  # Bland-Altman, or why not

    at.session_state["run_rows"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    _no_traceback(at)
    assert at.selectbox(key="scan_image").value == rows["id"].iloc[0]  # now on the Scan page
    assert "Predicting as the run plain was evaluated" in at.info[0].value


def test_run_page_names_a_folder_without_an_evaluation(monkeypatch, settings_json, tmp_path):
    at = _app(monkeypatch, settings_json).run()
    at.switch_page("views/run.py").run()
    at.text_input(key="run_folder").set_value(str(tmp_path / "missing")).run()
    _no_traceback(at)
    assert "missing: no such folder" in _errors(at)
    at.text_input(key="run_folder").set_value(str(tmp_path)).run()
    _no_traceback(at)
    assert "no summary.json" in _errors(at)


# ---------------------------------------------------------------------------- Compare


def test_compare_page_shows_two_runs_side_by_side(monkeypatch, settings_json):
    at = _app(monkeypatch, settings_json).run()
    at.switch_page("views/compare.py").run()
    _no_traceback(at)
    assert not at.error
    assert [at.selectbox(key=k).value for k in ("compare_a", "compare_b")] == ["plain", "flipped"]
    per_class = at.table[0].value
    assert {"Dice · A", "Dice · B"} <= set(per_class.columns)
    joined = at.dataframe[0].value
    assert {"dice_mean A", "dice_mean B", "change"} <= set(joined.columns)
    assert len(at.image) == 3  # truth, A, B

    at.text_area(key="compare_folders").set_value("/no/such/run").run()
    _no_traceback(at)
    assert "no such folder" in _errors(at)


def test_timing_prints_the_seconds_per_scan(bright_ckpt, tmp_path, capsys):
    (tmp_path / "scan.png").write_bytes(_scan_png())
    timing.main([str(bright_ckpt), str(tmp_path), "--repeats", "2", "--threads", "1"])
    printed = capsys.readouterr().out
    assert re.fullmatch(
        r"2 predictions at 32 x 48 px on 1 CPU thread\(s\): median \d+\.\d{3} s wall-clock "
        r"\(\d+\.\d{3} s CPU time\), slowest \d+\.\d{3} s per scan\n",
        printed,
    ), printed


# ---------------------------------------------------------------------------- real browser

# Per page: its path and texts it must show once drawn.
BROWSER_PAGES = {
    "scan": ("", ["Biometry", "HC", *FETAL_HEAD.names[1:]]),
    "run": ("run", ["Per class", "Images, worst first", "Bland-Altman", *FETAL_HEAD.names[1:]]),
    "compare": ("compare", ["Dice · A", "Dice · B", *FETAL_HEAD.names[1:]]),
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(port: int, server: subprocess.Popen, log: Path, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the viewer exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health") as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the viewer did not answer within {timeout:.0f} s:\n{log.read_text()}")


@pytest.mark.slow
def test_every_page_in_headless_chromium(tiny_ckpt, runs, data_overrides, tmp_path):
    """``python -m src.viewer`` on a free port; each page loaded in the system's Chromium,
    its text checked and a screenshot saved (in $SONOSEG_SCREENSHOTS, else tmp_path)."""
    if find_chromium() is None:
        pytest.skip("no chromium on PATH: `make viewer-check` installs Debian's package")
    port = _free_port()
    log = tmp_path / "viewer.log"
    command = [
        sys.executable,
        "-m",
        "src.viewer",
        f"ckpt_path={tiny_ckpt}",
        f"run_dir={runs[0]}",
        f"compare=[{runs[0]},{runs[1]}]",
        *data_overrides,
        f"port={port}",
    ]
    shots = Path(os.environ.get("SONOSEG_SCREENSHOTS") or tmp_path)
    with log.open("w") as output:
        server = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(port, server, log)
        with Browser() as browser:
            for name, (path, texts) in BROWSER_PAGES.items():
                browser.open(f"http://127.0.0.1:{port}/{path}")
                text = browser.wait_for(texts, timeout=180)
                assert "Traceback" not in text and "Error" not in text, text
                if name == "scan":  # an HC value: the prediction's or the true mask's
                    assert re.search(r"\bHC\b[\s–]+\d+\.\d", text), text
                assert browser.screenshot(shots / f"viewer_{name}.png").stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=30)
