"""What the viewer's pages share: the settings, the checkpoint loaded once per process
(``st.cache_resource``), cached predictions and run records, charts, and errors shown as
messages in the page (``stop``) instead of tracebacks."""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import altair as alt
import cv2
import numpy as np
import pandas as pd
import streamlit as st

from src.biometry import Biometry, PixelSize
from src.data.classes import RGB
from src.data.prepared import read_index
from src.evaluation.agreement import write_bland_altman_plots
from src.inference.measure import Measured, Segmenter, predict_biometry
from src.inference.package import load_segmenter, recorded_threshold
from src.viewer_app.run_records import RunRecord, load_run
from src.viewer_app.scan import click_grid, model_problem, without_classes
from src.viewer_app.settings import SETTINGS_ENV, Inference, ViewerSettings
from src.visualize import biometry_overlay, class_colours

SCAN_PAGE = "views/scan.py"  # relative to app.py, as st.switch_page wants it
SCAN_REQUEST = "scan_request"  # session key: an image (and model) for the Scan page to open
QUIZ_WIDTH = 640  # px on the page


def stop(message: str) -> NoReturn:
    """Show ``message`` as an error in the page and end this run of the page's script."""
    st.error(message)
    st.stop()


def settings() -> ViewerSettings:
    try:
        return ViewerSettings.from_json(os.environ.get(SETTINGS_ENV))
    except ValueError as error:
        stop(str(error))


@st.cache_resource(show_spinner="Loading the checkpoint ...", max_entries=4)
def _restored(paths: tuple[str, ...], stamps: tuple[float, ...]) -> Segmenter:
    """Loaded once per process and checkpoint version (``stamps``: the files' mtimes): the
    checkpoint(s), or an exported package folder (``src.export``, run by onnxruntime)."""
    return load_segmenter(list(paths), map_location="cpu")


def model(inference: Inference) -> Segmenter:
    """The checkpoint(s) of ``inference``; a message in the page when missing or unusable."""
    paths = inference.ckpt_paths
    stamps = tuple(Path(p).stat().st_mtime if Path(p).exists() else 0.0 for p in paths)
    try:
        restored = _restored(paths, stamps)
    except (OSError, ValueError, ImportError) as error:
        stop(f"Cannot use the checkpoint: {error}")
    problem = model_problem(restored)
    if problem is not None:
        stop(problem)
    return restored


@st.cache_data(show_spinner="Predicting ...", max_entries=64)
def _prediction(
    _model: Segmenter,
    model_key: tuple[str, ...],
    image: np.ndarray,
    pixel_size_mm: PixelSize,
    tta_flip: bool,
    rules_json: str,
    robust: bool,
    quality_threshold: float | None,
) -> tuple[Measured, float]:
    """Labels, biometry, quality score and flag, and the seconds they took; ``model_key``
    stands for ``_model`` (which Streamlit does not hash)."""
    start = time.perf_counter()
    measured = predict_biometry(
        _model,
        image,
        pixel_size_mm=pixel_size_mm,
        tta_flip=tta_flip,
        rules=json.loads(rules_json),
        robust_biometry=robust,
        quality_threshold=quality_threshold,
    )
    return measured, time.perf_counter() - start


@st.cache_data(max_entries=16)
def _threshold(_model: Segmenter, ckpt_paths: tuple[str, ...]) -> float | None:
    return recorded_threshold(_model, ckpt_paths)


def predict(
    restored: Segmenter, inference: Inference, image: np.ndarray, pixel: PixelSize
) -> tuple[Measured, float]:
    """The prediction of one scan (``predict_biometry``; the flag threshold calibrated when
    the checkpoints were evaluated) and the seconds it took, cached per scan and setting."""
    return _prediction(
        restored,
        inference.ckpt_paths,
        image,
        pixel,
        inference.tta_flip,
        json.dumps(dict(inference.rules), sort_keys=True),
        inference.robust_biometry,
        _threshold(restored, inference.ckpt_paths),
    )


@st.cache_data
def _index(prepared_dir: str) -> pd.DataFrame:
    return read_index(Path(prepared_dir))


def dataset_index(prepared_dir: str) -> pd.DataFrame:
    try:
        return _index(prepared_dir)
    except (OSError, ValueError) as error:
        stop(f"Cannot read the dataset's images: {error}")


@st.cache_data(max_entries=16)
def _run(path: str, stamp: float, label: str | None) -> RunRecord:
    return load_run(path, label)


def run_record(summary_path: Path, label: str | None = None) -> RunRecord:
    """A summary.json, read once per version; a message in the page when it is unusable."""
    try:
        return _run(str(summary_path), summary_path.stat().st_mtime, label)
    except (OSError, ValueError) as error:
        stop(f"Cannot read the run: {error}")


@st.cache_data(max_entries=16)
def _bland_altman(path: str, stamp: float) -> dict[str, bytes]:
    table = load_run(path).table
    with tempfile.TemporaryDirectory() as folder:
        written = write_bland_altman_plots(table.to_dict("records"), Path(folder))
        return {p.stem.removeprefix("bland_altman_hc_"): p.read_bytes() for p in written}


def bland_altman(record: RunRecord) -> dict[str, bytes]:
    """The evaluation's head-circumference Bland-Altman plots of this evaluation, by units."""
    return _bland_altman(str(record.summary_path), record.summary_path.stat().st_mtime)


def open_on_scan_page(
    rows: Sequence[int], ids: pd.Series, inference: Inference, state_key: str
) -> None:
    """A table row the user just selected opens its image on the Scan page, predicted as
    its run was evaluated. ``state_key`` remembers the selection, so coming back to the
    table does not open the same row again."""
    if not rows or list(rows) == st.session_state.get(state_key):
        st.session_state[state_key] = list(rows)
        return
    st.session_state[state_key] = list(rows)
    if settings().prepared_dir is None:
        stop(
            "The viewer was started without data (data_images=false): start it with the "
            "run's data overrides to open its images"
        )
    st.session_state[SCAN_REQUEST] = {"id": ids.iloc[rows[0]], "inference": inference}
    st.switch_page(SCAN_PAGE)


def show_table(table: pd.DataFrame, decimals: int = 3) -> None:
    """A small table as page text (searchable, unlike a data grid); NaN as a dash."""
    st.table(table.style.format(precision=decimals, na_rep="–"))


def hex_colours(colours: Sequence[RGB]) -> list[str]:
    return ["#{:02x}{:02x}{:02x}".format(*colour) for colour in colours]


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    biometry: Biometry | None,
    pixel: PixelSize,
    hidden: Sequence[int] = (),
    alpha: float = 0.45,
) -> np.ndarray:
    """src.visualize's overlay of ``labels`` with the hidden classes left out."""
    shown = without_classes(labels, hidden)
    return biometry_overlay(image, shown, names, biometry, pixel, alpha)


def distribution_chart(long: pd.DataFrame, names: Sequence[str], metric: str) -> alt.Chart:
    """Box plots of one metric per class, in the class set's colours."""
    foreground = list(names[1:])
    scale = alt.Scale(domain=foreground, range=hex_colours(class_colours(names)[1:]))
    return (
        alt.Chart(long)
        .mark_boxplot(extent="min-max", size=40)
        .encode(
            x=alt.X("class:N", sort=foreground, title=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y("value:Q", title=metric),
            color=alt.Color("class:N", scale=scale, legend=None),
        )
        .properties(height=260)
    )


def _png_data_url(image: np.ndarray, width: int) -> str:
    height = round(image.shape[0] * width / image.shape[1])
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", resized)
    if not ok:
        raise ValueError("could not encode the scan as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()


def quiz_chart(
    image: np.ndarray, guesses: dict[str, Sequence[float]], names: Sequence[str]
) -> alt.LayerChart:
    """The scan as a chart with a click selection (``click``) over an invisible grid of
    targets (``scan.click_grid``): a click selects the nearest target, i.e. where the
    student clicked, in image pixels. Earlier guesses are drawn as crosses."""
    height, width = image.shape[:2]
    chart_w = min(QUIZ_WIDTH, width)
    chart_h = round(height * chart_w / width)
    x = alt.X("x:Q", scale=alt.Scale(domain=[0, width], nice=False, zero=False), axis=None)
    y = alt.Y(
        "y:Q", scale=alt.Scale(domain=[0, height], nice=False, zero=False, reverse=True), axis=None
    )
    picture = pd.DataFrame({"x": [0], "y": [0], "url": [_png_data_url(image, chart_w)]})
    background = (
        alt.Chart(picture)
        .mark_image(width=chart_w, height=chart_h, align="left", baseline="top")
        .encode(x=x, y=y, url="url:N")
    )
    click = alt.selection_point(name="click", on="click", nearest=True, fields=["x", "y"])
    targets = (
        alt.Chart(click_grid(width, height))
        .mark_point(opacity=0)
        .encode(x=x, y=y)
        .add_params(click)
    )
    placed = pd.DataFrame(
        [{"x": gx, "y": gy, "structure": name} for name, (gx, gy) in guesses.items()],
        columns=["x", "y", "structure"],
    )
    scale = alt.Scale(domain=list(names[1:]), range=hex_colours(class_colours(names)[1:]))
    crosses = (
        alt.Chart(placed)
        .mark_point(shape="cross", size=220, filled=True, stroke="black", strokeWidth=1)
        .encode(x=x, y=y, color=alt.Color("structure:N", scale=scale, legend=None))
    )
    return alt.layer(background, targets, crosses).properties(width=chart_w, height=chart_h)
