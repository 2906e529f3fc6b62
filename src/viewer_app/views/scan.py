"""Scan: one scan with the predicted structures (opacity, per-class toggles, legend), the
fitted head ellipse and its measurements, the true outline and per-class Dice where the image
has a label, and a quiz mode that hides the prediction until the student has clicked where
each structure is."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st

from src.data.prepared import pixel_size_of, read_original
from src.inference.measure import measure_labels
from src.viewer_app import scan, ui
from src.visualize import class_colours, draw_markers

DATASET, UPLOAD = "Dataset image", "Upload"
INFERENCE = "scan_inference"  # session key: the Inference a Run/Compare row asked for
GUESSES = "quiz_guesses"  # session key: {image key: {structure: (x, y)}}


def take_request() -> None:
    """An image opened from the Run or Compare page: select it, predict as its run did."""
    request = st.session_state.pop(ui.SCAN_REQUEST, None)
    if request is not None:
        st.session_state[INFERENCE] = request["inference"]
        st.session_state["scan_source"] = DATASET
        st.session_state["scan_image"] = request["id"]


def uploaded_scan() -> tuple[np.ndarray, None, None, str]:
    # No ``type=`` filter: read_upload names a wrong file in the page itself.
    upload = st.file_uploader("Upload a scan (PNG or JPEG)", key="scan_upload")
    if upload is None:
        st.info("Upload a grey B-mode ultrasound scan of the fetal head to segment it.")
        st.stop()
    data = upload.getvalue()
    try:
        image = scan.read_upload(upload.name, data)
    except ValueError as error:
        ui.stop(str(error))
    return image, None, None, f"upload:{upload.name}:{hashlib.sha1(data).hexdigest()[:12]}"


def dataset_scan(prepared_dir: str) -> tuple[np.ndarray, np.ndarray, float | None, str]:
    index = ui.dataset_index(prepared_dir)
    ids = index["image"].tolist()
    wanted = st.session_state.get("scan_image")
    if wanted is not None and wanted not in ids:
        try:
            scan.index_row(index, wanted)
        except ValueError as error:
            st.error(str(error))
        st.session_state["scan_image"] = ids[0]
    image_id = st.selectbox("Dataset image", ids, key="scan_image")
    row = scan.index_row(index, image_id)
    try:
        image, truth = read_original(Path(prepared_dir), row)
    except ValueError as error:
        ui.stop(str(error))
    return image, truth, pixel_size_of(row), f"data:{image_id}"


settings = ui.settings()
take_request()
inference = st.session_state.get(INFERENCE, settings.model)
st.title("Scan")
if inference != settings.model:
    st.info(f"Predicting as {inference.source} was evaluated: {inference.ckpt_paths[0]}")
    if st.button("Use the viewer's checkpoint instead"):
        del st.session_state[INFERENCE]
        st.rerun()
model = ui.model(inference)
names, colours = model.class_names, class_colours(model.class_names)

mismatch = scan.data_mismatch(model, settings.data_class_names)
if settings.prepared_dir and mismatch:
    st.warning(mismatch)
sources = [DATASET, UPLOAD] if settings.prepared_dir and not mismatch else [UPLOAD]
source = st.radio("Scan", sources, horizontal=True, key="scan_source")
if source == UPLOAD:
    image, truth, known_pixel, image_key = uploaded_scan()
else:
    image, truth, known_pixel, image_key = dataset_scan(settings.prepared_dir)

typed = st.number_input(
    "Pixel size in mm (0: unknown; lengths in pixels)",
    min_value=0.0,
    value=float(known_pixel or 0.0),
    step=0.01,
    format="%.4f",
    key=f"pixel:{image_key}",
)
pixel = typed or None

with st.sidebar:
    st.markdown(scan.legend_html(names, colours), unsafe_allow_html=True)
    alpha = st.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="opacity")
    shown = {k: st.checkbox(name, True, key=f"show:{name}") for k, name in enumerate(names) if k}
    hidden = [k for k, visible in shown.items() if not visible]
    quiz = st.toggle("Quiz: find the structures first", key="quiz")

measured, seconds = ui.predict(model, inference, image, pixel)
labels, biometry = measured.labels, measured.biometry
reference = truth if truth is not None else labels
guesses = st.session_state.setdefault(GUESSES, {}).setdefault(image_key, {})
if quiz:
    structures = scan.present_structures(reference, names)
    wanted = scan.next_structure(structures, guesses)
    if wanted is not None:
        st.subheader(f"Quiz: click where the {wanted} is")
        st.caption(
            f"Placed {len(guesses)} of {len(structures)} ({', '.join(structures)}); the "
            "prediction appears when every structure is placed."
        )
        event = st.altair_chart(
            ui.quiz_chart(image, guesses, names),
            on_select="rerun",
            selection_mode="click",
            key=f"quiz_chart:{image_key}:{len(guesses)}",  # a fresh selection per guess
        )
        point = scan.clicked_point(event.get("selection"), "click")
        if point is not None:
            guesses[wanted] = point
            st.rerun()
        st.stop()
    against = "the true outline" if truth is not None else "the model's prediction"
    st.subheader(f"Quiz: how close you were (to {against})")
    if structures:
        scores = scan.score_guesses(guesses, reference, names, pixel)
        ui.show_table(scores.set_index("structure"), 1)
    else:
        st.info(f"Nothing to find: {against} holds no structure.")
    if st.button("Try again"):
        guesses.clear()
        st.rerun()


def with_clicks(rgb: np.ndarray) -> np.ndarray:
    """The quiz's clicks drawn on an overlay once revealed."""
    if not quiz:
        return rgb
    return draw_markers(rgb, list(guesses.values()), [colours[names.index(n)] for n in guesses])


panels = [
    ("prediction", with_clicks(ui.overlay(image, labels, names, biometry, pixel, hidden, alpha)))
]
truth_biometry = None
if truth is not None:
    truth_biometry = measure_labels(truth, names, pixel)
    truth_rgb = ui.overlay(image, truth, names, truth_biometry, pixel, hidden, alpha)
    panels.append(("true outline", with_clicks(truth_rgb)))
for column, (caption, rgb) in zip(st.columns(len(panels)), panels, strict=True):
    column.image(rgb, caption=caption, width="stretch")
st.caption(
    f"Predicted in {seconds:.2f} s on the CPU: network input {model.image_size[0]} x "
    f"{model.image_size[1]} px (its training size), image {image.shape[1]} x {image.shape[0]} px"
    + (", flip TTA" if inference.tta_flip else "")
    + (f", post-processing {dict(inference.rules)}" if inference.rules else "")
)

st.subheader("Biometry")
if biometry is None:
    st.warning("No head measured in the prediction.")
else:
    head = biometry.head
    for column, (name, value) in zip(
        st.columns(3), (("HC", head.hc), ("BPD", head.bpd), ("OFD", head.ofd)), strict=True
    ):
        column.metric(name, f"{value:.1f} {head.units}")
    st.caption(scan.quality_text(measured.quality_score, measured.flagged, head.units))
    if measured.flagged:
        st.warning(
            "Redo this measurement by hand: the head circumference moves by "
            f"{measured.quality_score:.1f} {head.units} between mirrored and zoomed-out views "
            "of this scan, more than on 90% of the validation scans."
        )
ui.show_table(scan.biometry_table(biometry, truth_biometry), 1)
if truth is not None:
    st.subheader("Dice per class")
    ui.show_table(scan.class_dice(labels, truth, names).set_index("class"))
