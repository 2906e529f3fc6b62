"""One scan on the viewer's pages, apart from drawing widgets: whether a checkpoint and an
upload fit, per-class Dice and biometry tables, the legend, an image's row in the prepared data
and the quiz's scoring. No Streamlit here, so all of it is unit-tested.

Every error a user can cause (a bad upload, a checkpoint that does not fit, an image of other
data) is a ``ValueError`` with a message meant for the page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from src.biometry import Biometry
from src.data.classes import RGB
from src.evaluation.evaluate import dice_per_image
from src.inference.images import decode_image
from src.inference.measure import Segmenter

MIN_SCAN_SIDE = 32  # px; smaller uploads are thumbnails or icons, not scans
# A grey B-mode scan has a few coloured pixels at most (annotations, a logo); a photo or a
# colour overlay has many. Pixels whose channels differ by more than COLOUR_CHROMA count as
# coloured; more than COLOUR_FRACTION of them: not a scan.
COLOUR_CHROMA = 40
COLOUR_FRACTION = 0.05
MIN_GREY_LEVELS = 8  # fewer distinct grey levels: a label mask or a drawing, not a scan
QUIZ_CELLS = 64  # click targets along the longer side of the quiz image


def model_problem(model: Segmenter) -> str | None:
    """Why this checkpoint cannot segment the viewer's scans, or None."""
    if model.in_channels != 1:
        return (
            f"{model.checkpoint_path}: the model takes {model.in_channels} input channels; "
            "the viewer feeds grey scans (1 channel)"
        )
    return None


def data_mismatch(model: Segmenter, data_class_names: Sequence[str] | None) -> str | None:
    """Why the dataset's label masks cannot be compared with this model's output, or None."""
    if data_class_names is None or tuple(data_class_names) == model.class_names:
        return None
    return (
        f"the checkpoint predicts {', '.join(model.class_names[1:])}, the data's masks hold "
        f"{', '.join(data_class_names[1:])}: start the viewer with the data the checkpoint was "
        "trained on (data=... data.root=...) to see true outlines and Dice"
    )


def read_upload(name: str, data: bytes) -> np.ndarray:
    """An uploaded file as a uint8 grey scan; ValueError naming the file and what is wrong
    (not an image file, undecodable, or not a grey ultrasound scan)."""
    grey = decode_image(data, name)
    colour = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    problem = scan_problem(colour)
    if problem is not None:
        raise ValueError(f"{name}: {problem}")
    return grey


def scan_problem(image: np.ndarray) -> str | None:
    """Why a decoded image (grey, or BGR) is not a B-mode scan to segment, or None."""
    height, width = image.shape[:2]
    if min(height, width) < MIN_SCAN_SIDE:
        return (
            f"only {width} x {height} pixels: too small for a scan "
            f"(at least {MIN_SCAN_SIDE} px a side)"
        )
    if image.ndim == 3:
        chroma = image.max(axis=2).astype(np.int16) - image.min(axis=2)
        coloured = float((chroma > COLOUR_CHROMA).mean())
        if coloured > COLOUR_FRACTION:
            return (
                f"a colour picture ({coloured:.0%} of its pixels coloured): expected a grey "
                "B-mode ultrasound scan"
            )
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    levels = len(np.unique(image))
    if levels < MIN_GREY_LEVELS:
        return (
            f"only {levels} grey level(s): a label mask or a drawing, not an ultrasound scan "
            "(upload the scan itself)"
        )
    return None


def without_classes(labels: np.ndarray, hidden: Sequence[int]) -> np.ndarray:
    """``labels`` with the hidden label ids shown as background (the per-class toggles)."""
    return np.where(np.isin(labels, list(hidden)), 0, labels).astype(labels.dtype)


def class_dice(labels: np.ndarray, truth: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Per foreground class: Dice of the prediction against the true mask (NaN where the
    class is in neither, as in the evaluation) and whether each holds it."""
    dice = dice_per_image(labels, truth, len(class_names))
    return pd.DataFrame(
        {
            "class": list(class_names[1:]),
            "Dice": dice,
            "in truth": [bool((truth == k).any()) for k in range(1, len(class_names))],
            "predicted": [bool((labels == k).any()) for k in range(1, len(class_names))],
        }
    )


BIOMETRY_ROWS = ("HC", "BPD", "OFD", "CSP width", "LV width")


def quality_text(score: float, flagged: bool | None, units: str) -> str:
    """One line on how far to trust the measurement (``src.inference.quality``)."""
    if math.isnan(score):
        return "Quality score: nothing measured."
    spread = "a head in some views only" if math.isinf(score) else f"{score:.1f} {units}"
    verdict = {
        True: "flagged: redo by hand",
        False: "not flagged",
        None: "no calibrated threshold (evaluate the checkpoint to get one)",
    }[flagged]
    return f"Quality score (HC spread over mirrored and zoomed-out views): {spread}; {verdict}."


def biometry_table(predicted: Biometry | None, truth: Biometry | None = None) -> pd.DataFrame:
    """HC, BPD, OFD, CSP and LV widths of the prediction (and of the true mask), one row
    each; NaN where a structure was not found. Units: the head measurement's."""
    columns = {"prediction": predicted, **({"truth": truth} if truth is not None else {})}
    table = pd.DataFrame(
        {name: _biometry_values(biometry) for name, biometry in columns.items()},
        index=list(BIOMETRY_ROWS),
    )
    table["units"] = next((b.head.units for b in columns.values() if b is not None), "px")
    return table


def _biometry_values(biometry: Biometry | None) -> list[float]:
    if biometry is None:
        return [math.nan] * len(BIOMETRY_ROWS)
    head = biometry.head
    widths = (biometry.csp_width, biometry.lv_width)
    return [head.hc, head.bpd, head.ofd, *(math.nan if w is None else w for w in widths)]


def legend_html(names: Sequence[str], colours: Sequence[RGB]) -> str:
    """One swatch and name per foreground class (page text, so the legend can be read and
    searched, not only seen in the picture)."""
    return " &nbsp; ".join(
        f'<span style="display:inline-block;width:0.9em;height:0.9em;border-radius:2px;'
        f'background:rgb{tuple(colour)};vertical-align:middle"></span> {name}'
        for name, colour in zip(names[1:], colours[1:], strict=True)
    )


def index_row(index: pd.DataFrame, image_id: str) -> dict:
    """index.csv's row of an image id (a per-image ``id`` is index.csv's ``image``)."""
    rows = index[index["image"] == image_id]
    if rows.empty:
        raise ValueError(
            f"{image_id} is not in the prepared data: the run was evaluated on other data; "
            "start the viewer with the run's data overrides (data=... data.root=...)"
        )
    return rows.iloc[0].to_dict()


# ---------------------------------------------------------------------------- quiz


def present_structures(reference: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """The foreground classes present in ``reference``: what a student is asked to find."""
    return [name for k, name in enumerate(class_names) if k and (reference == k).any()]


def click_grid(width: int, height: int, cells: int = QUIZ_CELLS) -> pd.DataFrame:
    """Invisible click targets (x, y in image pixels) on a regular grid: a click on the quiz
    chart selects the nearest, so its coordinates are where the student clicked."""
    step = max(width, height) / cells
    xs = np.arange(step / 2, width, step)
    ys = np.arange(step / 2, height, step)
    grid_x, grid_y = np.meshgrid(xs, ys)
    return pd.DataFrame({"x": grid_x.ravel().round(1), "y": grid_y.ravel().round(1)})


def clicked_point(selection: Mapping | None, param: str) -> tuple[float, float] | None:
    """(x, y) of the point a chart selection ``param`` holds (Streamlit's selection state:
    ``{param: [{"x": ..., "y": ...}]}``), or None when nothing is selected."""
    points = (selection or {}).get(param) or []
    if not points:
        return None
    return float(points[0]["x"]), float(points[0]["y"])


def next_structure(structures: Sequence[str], guesses: Mapping[str, object]) -> str | None:
    """The first structure without a guess (the quiz asks for it next), or None when done."""
    return next((name for name in structures if name not in guesses), None)


def score_guesses(
    guesses: Mapping[str, Sequence[float]],
    reference: np.ndarray,
    class_names: Sequence[str],
    pixel_size_mm: float | None,
) -> pd.DataFrame:
    """Per guessed structure: whether the click is inside it and the distance from the click
    to its nearest pixel (0 inside), in mm with a pixel size, else in pixels."""
    units = "px" if pixel_size_mm is None else "mm"
    size = 1.0 if pixel_size_mm is None else float(pixel_size_mm)
    height, width = reference.shape
    rows = []
    for name, (x, y) in guesses.items():
        label = list(class_names).index(name)
        row, col = min(max(round(y), 0), height - 1), min(max(round(x), 0), width - 1)
        rows_of, cols_of = np.nonzero(reference == label)
        inside = bool(reference[row, col] == label)
        if inside:
            distance = 0.0
        elif rows_of.size:
            distance = float(np.hypot(cols_of - x, rows_of - y).min() * size)
        else:
            distance = math.nan
        rows.append({"structure": name, "inside": inside, f"distance ({units})": distance})
    return pd.DataFrame(rows)
