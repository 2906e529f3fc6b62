"""Compare: two evaluated runs (e.g. two jobs of a sweep) side by side: their per-class
scores, the images both scored sorted by how much the Dice changed, and one image's true
outline beside each run's prediction."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from src.data.prepared import pixel_size_of, read_original
from src.inference.measure import measure_labels
from src.viewer_app import run_records, scan, ui

settings = ui.settings()
st.title("Compare")
configured = settings.compare_dirs or ((settings.run_dir,) if settings.run_dir else ())
text = st.text_area(
    "Evaluated runs, or sweep folders (their finished jobs), one per line",
    value="\n".join(configured),
    key="compare_folders",
)
folders = [line.strip() for line in text.splitlines() if line.strip()]
runs, problems = run_records.list_runs(folders)
for problem in problems:
    st.error(problem)
if len(runs) < 2:
    st.info("Give two evaluated runs, or a sweep with two finished jobs, to compare.")
    st.stop()
labels = list(runs)
left, right = st.columns(2)
label_a = left.selectbox("Run A", labels, index=0, key="compare_a")
label_b = right.selectbox("Run B", labels, index=1, key="compare_b")
first, second = ui.run_record(runs[label_a], label_a), ui.run_record(runs[label_b], label_b)

st.subheader("Per class")
ui.show_table(run_records.per_class_table({"A": first, "B": second}))
try:
    joined = run_records.join_runs(first, second).reset_index(drop=True)
except ValueError as error:
    ui.stop(str(error))
if joined.empty:
    ui.stop("The two runs scored no image in common: nothing to compare image by image.")

st.subheader(f"{len(joined)} images both scored, largest change in mean Dice (B - A) first")
event = st.dataframe(
    joined, on_select="rerun", selection_mode="single-row", hide_index=True, key="compare_rows"
)
if settings.prepared_dir is None:
    st.info("Start the viewer with the runs' data overrides to see the images.")
    st.stop()
row = joined.iloc[(event.selection.rows or [0])[0]]
index = ui.dataset_index(settings.prepared_dir)
try:
    index_row = scan.index_row(index, row["id"])
    image, truth = read_original(Path(settings.prepared_dir), index_row)
except ValueError as error:
    ui.stop(str(error))
pixel = pixel_size_of(index_row)
names = first.class_names
st.caption(f"{row['id']} (click a row above to show another image)")
panels = [("true outline", truth, measure_labels(truth, names, pixel))]
for name, record in (("A", first), ("B", second)):
    inference = record.inference()
    restored = ui.model(inference)
    measured, _ = ui.predict(restored, inference, image, pixel)
    caption = f"{name}: mean Dice {row[f'dice_mean {name}']:.3f}"
    panels.append((caption, measured.labels, measured.biometry))
for column, (caption, labels, biometry) in zip(st.columns(3), panels, strict=True):
    shown = ui.overlay(image, labels, names, biometry, pixel)
    column.image(shown, caption=caption, width="stretch")
