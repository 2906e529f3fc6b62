"""What the viewer computes, apart from drawing widgets: its settings, checks of uploads and
checkpoints, per-class Dice and biometry tables, the quiz's scoring, and reading evaluated
runs (summary.json) into sortable tables. No Streamlit here, so all of it is unit-tested.

Every error a user can cause (a bad upload, a checkpoint or folder that does not fit) is a
``ValueError`` or ``OSError`` with a message meant for the page.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from src.biometry import Biometry
from src.data.classes import RGB
from src.evaluation.evaluate import dice_per_image
from src.inference.checkpoint import RestoredModel
from src.inference.images import decode_image
from src.report import find_jobs, read_job

SETTINGS_ENV = "SONOSEG_VIEWER"  # the launcher hands the app its settings as JSON here
MIN_SCAN_SIDE = 32  # px; smaller uploads are thumbnails or icons, not scans
# A grey B-mode scan has a few coloured pixels at most (annotations, a logo); a photo or a
# colour overlay has many. Pixels whose channels differ by more than COLOUR_CHROMA count as
# coloured; more than COLOUR_FRACTION of them: not a scan.
COLOUR_CHROMA = 40
COLOUR_FRACTION = 0.05
MIN_GREY_LEVELS = 8  # fewer distinct grey levels: a label mask or a drawing, not a scan
QUIZ_CELLS = 64  # click targets along the longer side of the quiz image


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Inference:
    """Which checkpoint(s) predict and how: the viewer's own (src.predict's options), or
    those a run was evaluated with, so a run's image shows the prediction it was scored on."""

    ckpt_paths: tuple[str, ...]
    tta_flip: bool = False
    rules: Mapping[str, Sequence[str]] = field(default_factory=dict)
    robust_biometry: bool = False
    source: str = "the viewer's checkpoint"


@dataclass(frozen=True)
class ViewerSettings:
    """What ``python -m src.viewer`` hands the app (JSON in ``SONOSEG_VIEWER``)."""

    model: Inference
    run_dir: str | None = None
    compare_dirs: tuple[str, ...] = ()
    prepared_dir: str | None = None  # the data config's prepared copy: dataset images
    data_class_names: tuple[str, ...] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> ViewerSettings:
        if not text:
            raise ValueError(
                f"no viewer settings ({SETTINGS_ENV} is not set): start the viewer with "
                "`python -m src.viewer ckpt_path=<file.ckpt>` (or `make viewer ARGS=...`)"
            )
        try:
            raw = json.loads(text)
            model = raw.pop("model")
            return cls(
                model=Inference(**{**model, "ckpt_paths": tuple(model["ckpt_paths"])}),
                run_dir=raw.pop("run_dir", None),
                compare_dirs=tuple(raw.pop("compare_dirs", ())),
                prepared_dir=raw.pop("prepared_dir", None),
                data_class_names=_optional_tuple(raw.pop("data_class_names", None)),
                **raw,
            )
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{SETTINGS_ENV} holds no valid viewer settings: {error}") from error


def _optional_tuple(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def model_problem(model: RestoredModel) -> str | None:
    """Why this checkpoint cannot segment the viewer's scans, or None."""
    if model.in_channels != 1:
        return (
            f"{model.checkpoint_path}: the model takes {model.in_channels} input channels; "
            "the viewer feeds grey scans (1 channel)"
        )
    return None


def data_mismatch(model: RestoredModel, data_class_names: Sequence[str] | None) -> str | None:
    """Why the dataset's label masks cannot be compared with this model's output, or None."""
    if data_class_names is None or tuple(data_class_names) == model.class_names:
        return None
    return (
        f"the checkpoint predicts {', '.join(model.class_names[1:])}, the data's masks hold "
        f"{', '.join(data_class_names[1:])}: start the viewer with the data the checkpoint was "
        "trained on (data=... data.root=...) to see true outlines and Dice"
    )


# ---------------------------------------------------------------------------- scans


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


# ---------------------------------------------------------------------------- runs

SUMMARY_GLOB = "summary*.json"  # summary.json and the timestamped ones of later evaluations
PER_CLASS_FAMILIES = ("dice", "iou", "hd95_mm", "assd_mm", "hd95_px", "assd_px")
LOWER_IS_WORSE = ("dice", "iou")  # every other metric: higher is worse (distances, errors)
# Numeric per-image columns that describe the image, not how well it was segmented.
NOT_METRICS = ("orig_width", "orig_height", "pixel_size_mm", "ellipse_")


@dataclass(frozen=True)
class RunRecord:
    """One evaluation of a run: its summary.json and the per-image table in it (the rows
    of per_image.csv), with ``dice_mean`` per image added (mean over the classes scored)."""

    summary_path: Path
    summary: dict
    table: pd.DataFrame
    label: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("background", *self.summary["classes"])

    @property
    def stratum_column(self) -> str | None:
        column = (self.summary.get("per_stratum") or {}).get("column")
        return column or ("plane" if "per_plane" in self.summary else None)

    def checkpoint(self) -> Path:
        """The evaluated checkpoint: the recorded path, or a file of that name beside the
        summary (a run folder moved since); the recorded path when neither exists."""
        recorded = Path(self.summary.get("checkpoint") or "")
        beside = self.summary_path.parent / recorded.name
        return beside if not recorded.is_file() and beside.is_file() else recorded

    def inference(self) -> Inference:
        """How the evaluation predicted: its checkpoint, flip TTA, post-processing rules."""
        settings = self.summary.get("settings") or {}
        return Inference(
            ckpt_paths=(str(self.checkpoint()),),
            tta_flip=bool(settings.get("tta_flip", False)),
            rules=(self.summary.get("postprocess") or {}).get("rules") or {},
            robust_biometry=bool(settings.get("robust_biometry", False)),
            source=f"the run {self.label}",
        )


def find_summaries(folder: str | Path) -> list[Path]:
    """The summaries in an evaluated folder (``src.eval``'s out_dir) or in a training run
    folder's ``checkpoints/``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected an evaluated run)")
    for place in (folder, folder / "checkpoints"):
        found = sorted(place.glob(SUMMARY_GLOB), key=lambda p: p.stat().st_mtime, reverse=True)
        if found:
            return found
    raise FileNotFoundError(
        f"{folder}: no summary.json here or in checkpoints/: evaluate the checkpoint first "
        "(`python -m src.eval ckpt_path=...`) or pick the run's folder"
    )


def load_run(summary_path: str | Path, label: str | None = None) -> RunRecord:
    """A summary.json read into a ``RunRecord``; ValueError naming what is missing."""
    path = Path(summary_path)
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    missing = [key for key in ("classes", "per_class", "per_image") if key not in summary]
    if missing:
        raise ValueError(
            f"{path}: no {', '.join(missing)} (expected a summary.json written by src.eval "
            "or after training)"
        )
    table = pd.DataFrame(summary["per_image"])
    if table.empty or "id" not in table:
        raise ValueError(f"{path}: no per-image rows with an 'id' to show")
    dice = table.reindex(columns=[f"dice_{name}" for name in summary["classes"]])
    table.insert(1, "dice_mean", dice.astype(float).mean(axis=1, skipna=True))
    return RunRecord(path, summary, table, label or run_label(path))


def run_label(summary_path: Path) -> str:
    """A run's name: its job folder's overrides as ``src.report`` reads them (a sweep job),
    else the folder's name."""
    folder = summary_path.parent
    job = folder.parent if folder.name == "checkpoints" else folder
    if (job / ".hydra" / "overrides.yaml").is_file():
        try:
            read = read_job(job)
        except ValueError:
            return job.name
        setting = ", ".join(f"{key}={value}" for key, value in read.setting)
        return f"{job.name} ({setting}, fold {read.fold})"
    return job.name


def list_runs(folders: Sequence[str | Path]) -> tuple[dict[str, Path], list[str]]:
    """Evaluated runs under ``folders``, by label: each folder is an evaluated run, or a
    sweep whose finished jobs are listed fold by fold (so the first two are settings scored
    on the same images), labelled by the overrides that differ between them, as the rows of
    a sweep report. Also the problems, one per folder left out."""
    runs: dict[str, Path] = {}
    problems = []
    for folder in map(Path, folders):
        try:
            newest = find_summaries(folder)[0]
            runs[run_label(newest)] = newest
            continue
        except FileNotFoundError as error:
            problem = str(error)
        try:
            finished = [job for job in find_jobs([folder]) if job.status == "finished"]
            jobs = sorted(finished, key=lambda job: (job.fold, job.path.name))
        except (FileNotFoundError, ValueError):
            problems.append(problem)
            continue
        shared = set.intersection(*(set(job.setting) for job in jobs)) if jobs else set()
        for job in jobs:
            differs = ", ".join(f"{k}={v}" for k, v in job.setting if (k, v) not in shared)
            runs[f"{job.path.name} ({differs or 'same setting'}, fold {job.fold})"] = (
                job.path / "checkpoints" / "summary.json"
            )
        if not jobs:
            problems.append(f"{folder}: a sweep without a finished job")
    return runs, problems


def metric_columns(table: pd.DataFrame) -> list[str]:
    """The per-image columns a table can be sorted by: numbers that score the image."""
    numeric = table.select_dtypes("number").columns
    return [column for column in numeric if column != "id" and not column.startswith(NOT_METRICS)]


def worst_first(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``table`` sorted worst first by ``metric``: lowest Dice/IoU, largest distance, largest
    absolute difference (``*_diff``); images without a value last."""
    values = table[metric].astype(float)
    if metric.startswith(LOWER_IS_WORSE):
        key = values
    elif metric.endswith("_diff"):
        key = -values.abs()
    else:
        key = -values
    return table.loc[key.sort_values(na_position="last", kind="stable").index]


def families(table: pd.DataFrame, class_names: Sequence[str]) -> list[str]:
    """The per-class metrics (dice, iou, hd95_mm, ...) with a value for some image."""
    return [
        family
        for family in PER_CLASS_FAMILIES
        if any(
            f"{family}_{name}" in table and table[f"{family}_{name}"].notna().any()
            for name in class_names[1:]
        )
    ]


def class_distribution(
    table: pd.DataFrame, family: str, class_names: Sequence[str]
) -> pd.DataFrame:
    """Long table (class, value) of one per-class metric over the images; images where it
    is undefined (NaN) left out, as in the class means."""
    parts = [
        pd.DataFrame({"class": name, "value": table[f"{family}_{name}"].astype(float)})
        for name in class_names[1:]
        if f"{family}_{name}" in table
    ]
    return pd.concat(parts, ignore_index=True).dropna()


def shown_columns(record: RunRecord, sort_metric: str) -> list[str]:
    """The run table's columns: the image, its stratum and subject, mean and per-class Dice,
    the head circumference, and the metric it is sorted by."""
    names = record.class_names[1:]
    wanted = [
        "id",
        record.stratum_column,
        "subject",
        "dice_mean",
        *(f"dice_{name}" for name in names),
        sort_metric,
        "hc_true",
        "hc_pred",
        "hc_diff",
        "biometry_units",
    ]
    return [c for c in dict.fromkeys(wanted) if c is not None and c in record.table]


METRIC_TITLES = {"dice": "Dice", "iou": "IoU", "hd95_mm": "HD95 mm", "hd95_px": "HD95 px"}


def per_class_table(records: Mapping[str, RunRecord]) -> pd.DataFrame:
    """Per class (and their mean): Dice, IoU and HD95 of each run, side by side; HD95 in mm
    where every class has it, else in px."""
    names = list(next(iter(records.values())).summary["classes"])
    out = pd.DataFrame(index=[*names, "mean"])
    for label, record in records.items():
        per_class, mean = record.summary["per_class"], record.summary.get("mean") or {}
        distance = next(
            (
                m
                for m in ("hd95_mm", "hd95_px")
                if all(per_class[n].get(m) is not None for n in names)
            ),
            None,
        )
        for metric in ("dice", "iou", *([distance] if distance else [])):
            values = [per_class[n].get(metric) for n in names] + [mean.get(f"{metric}_mean")]
            title = METRIC_TITLES[metric] + (f" · {label}" if len(records) > 1 else "")
            out[title] = pd.to_numeric(pd.Series(values, index=out.index), errors="coerce")
    return out


def join_runs(first: RunRecord, second: RunRecord) -> pd.DataFrame:
    """The images both runs scored, with each run's mean and per-class Dice and the change
    (second - first), largest change first."""
    if first.class_names != second.class_names:
        raise ValueError(
            f"the runs segment different classes ({', '.join(first.class_names[1:])} vs "
            f"{', '.join(second.class_names[1:])}): nothing to compare image by image"
        )
    scores = ["dice_mean", *(f"dice_{name}" for name in first.class_names[1:])]
    keep = ["id", *(c for c in (first.stratum_column,) if c and c in first.table)]
    joined = first.table[keep + scores].merge(
        second.table[["id", *scores]], on="id", suffixes=(" A", " B")
    )
    joined.insert(len(keep), "change", joined["dice_mean B"] - joined["dice_mean A"])
    return joined.loc[joined["change"].abs().sort_values(ascending=False, kind="stable").index]


def index_row(index: pd.DataFrame, image_id: str) -> dict:
    """index.csv's row of an image id (a per-image ``id`` is index.csv's ``image``)."""
    rows = index[index["image"] == image_id]
    if rows.empty:
        raise ValueError(
            f"{image_id} is not in the prepared data: the run was evaluated on other data; "
            "start the viewer with the run's data overrides (data=... data.root=...)"
        )
    return rows.iloc[0].to_dict()
