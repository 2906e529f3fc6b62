"""Run: one evaluated run (summary.json with its per-image rows): the per-class scores and
distributions, the images in a table sorted worst first by any metric (a click on a row
opens that image on the Scan page), and the Bland-Altman plot of the head circumference."""

from __future__ import annotations

import streamlit as st

from src import runs
from src.viewer_app import run_records, ui

settings = ui.settings()
st.title("Run")
folder = st.text_input(
    "Evaluated run: src.eval's out_dir, or a training run's folder",
    value=settings.run_dir or "",
    key="run_folder",
).strip()
if not folder:
    st.info("Give the folder of an evaluated run (start the viewer with run_dir=...).")
    st.stop()
try:
    summaries = runs.find_summaries(folder)
except OSError as error:
    ui.stop(str(error))
summary_path = (
    st.selectbox("Evaluation", summaries, format_func=lambda path: path.name, key="run_summary")
    if len(summaries) > 1
    else summaries[0]
)
record = ui.run_record(summary_path)
summary, table, names = record.summary, record.table, record.class_names
inference = record.inference()
st.caption(
    f"{record.label}: {summary.get('num_images', len(table))} images of the "
    f"{summary.get('split', 'test')} split; checkpoint {inference.ckpt_paths[0]}; "
    f"flip TTA {'on' if inference.tta_flip else 'off'}; "
    f"post-processing {dict(inference.rules) or 'none'}"
)

st.subheader("Per class")
ui.show_table(run_records.per_class_table({record.label: record}))

st.subheader("Distributions")
family = st.selectbox("Metric", run_records.families(table, names), key="run_family")
st.altair_chart(
    ui.distribution_chart(run_records.class_distribution(table, family, names), names, family)
)

st.subheader("Images, worst first")
metrics = run_records.metric_columns(table)
metric = st.selectbox("Sort by", metrics, index=metrics.index("dice_mean"), key="run_sort")
ordered = run_records.worst_first(table, metric)[run_records.shown_columns(record, metric)]
ordered = ordered.reset_index(drop=True)
st.caption("Click a row to open the image on the Scan page; click a column title to re-sort.")
event = st.dataframe(
    ordered, on_select="rerun", selection_mode="single-row", hide_index=True, key="run_rows"
)
ui.open_on_scan_page(event.selection.rows, ordered["id"], inference, "run_opened")

st.subheader("Head circumference: Bland-Altman")
plots = ui.bland_altman(record)
for units, png in plots.items():
    st.image(png, caption=f"HC in {units}: prediction vs the true mask's ellipse")
if not plots:
    st.info("No plot: fewer than two images have a head measured in both truth and prediction.")
