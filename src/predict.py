"""Predict label masks, overlays and head biometry for image files (no labels needed).

    python -m src.predict ckpt_path=<file.ckpt, [a.ckpt,b.ckpt] or a package folder>
        input=<image|folder> out_dir=<folder>
        [pixel_size_mm=0.15 | pixel_size_csv=<HC18 CSV>] [overwrite=true] [tta_flip=true]

Writes ``out_dir/masks/<name>.png`` (uint8 label ids at the image's original size),
``out_dir/overlays/<name>.png`` (class colours, the fitted head ellipse and its values) and
``out_dir/biometry.csv`` (one row per image; mm with ``pixel_size_mm``, px otherwise; the
``quality_score``, how far the head circumference moves between mirrored and zoomed-out views,
and ``flagged``, the score above the threshold calibrated on validation images when the
checkpoint was evaluated: the measurements to redo by hand; ``src.inference.quality``).
``pixel_size_csv`` gives a pixel size per file instead, from a CSV in HC18's format
(``filename,pixel size(mm)``, as ``test_set_pixel_size.csv``); with pixel sizes for every
image, ``out_dir/hc18_submission.csv`` holds the head ellipses in the challenge's format. A
file that cannot be read is named, listed in ``skipped.csv`` and the others go on; the
command fails only when no image could be processed. The folder is built beside ``out_dir``
and moved in when complete, and an existing ``out_dir`` is replaced only with
``overwrite=true`` and only if it is an earlier prediction folder.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import cv2
import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

import src  # PROJECT_ROOT for the configs, CONF_DIR for Hydra
from src.biometry import (
    HeadMeasurement,
    PixelSize,
)
from src.data.classes import class_set_for, head_class_set
from src.data.images import FILE_CHANNELS, IMAGE_SUFFIXES
from src.data.prepared import check_replaceable, replace_dir, staging_dir
from src.data.readers.hc18 import (
    HEAD_CIRCUMFERENCE,
    OUTLINE,
    PIXEL_SIZE,
    SUBMISSION_CSV,
    read_pixel_csv,
    write_submission,
)
from src.ellipse import ELLIPSE_FIELDS
from src.inference.images import list_inputs, read_image
from src.inference.measure import Segmenter, predict_biometry
from src.inference.package import is_package, load_segmenter, recorded_threshold
from src.inference.quality import evaluated_settings
from src.visualize import biometry_overlay

log = logging.getLogger(__name__)

BIOMETRY_CSV = "biometry.csv"  # also the mark of a prediction folder (see check_replaceable)
PREDICTION_KIND = "prediction folder"
SKIPPED_CSV = "skipped.csv"
# The fit-geometry ``check`` is left out: it does not predict a measurement's error on real
# scans (experiments/hc18/README.md); ``flagged`` is the quality flag.
BIOMETRY_COLUMNS = [f.name for f in fields(HeadMeasurement) if f.name != "check"] + [
    "csp_width",
    "lv_width",
    "quality_score",
    "flagged",
]


@dataclass
class PredictionReport:
    """What one call did: the processed images' rows and the skipped files with the reason."""

    out_dir: Path
    rows: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def predict_image(
    model: Segmenter,
    image: np.ndarray,
    *,
    pixel_size_mm: PixelSize = None,
    tta_flip: bool = False,
    rules: Mapping[str, Sequence[str]] | None = None,
    robust_biometry: bool = False,
    quality_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels (H, W), the RGB overlay and the biometry columns of one uint8 grey image (with
    the quality score, and the flag given the checkpoint's ``quality_threshold``)."""
    measured = predict_biometry(
        model,
        image,
        pixel_size_mm=pixel_size_mm,
        tta_flip=tta_flip,
        rules=rules,
        robust_biometry=robust_biometry,
        quality_threshold=quality_threshold,
    )
    labels, biometry = measured.labels, measured.biometry
    overlay = biometry_overlay(image, labels, model.class_names, biometry, pixel_size_mm)
    values = biometry.as_row() if biometry else {}
    return (
        labels,
        overlay,
        {
            "head_found": biometry is not None,
            **values,
            "quality_score": measured.quality_score,
            "flagged": measured.flagged,
        },
    )


def predict_files(
    model: Segmenter,
    files: Sequence[Path],
    out_dir: str | Path,
    *,
    pixel_size_mm: PixelSize = None,
    pixel_sizes: Mapping[str, float] | None = None,
    reference_hc: Mapping[str, float] | None = None,
    tta_flip: bool = False,
    rules: Mapping[str, Sequence[str]] | None = None,
    robust_biometry: bool = False,
    overwrite: bool = False,
    quality_threshold: float | None = None,
) -> PredictionReport:
    """Predict every readable file into ``out_dir`` (built aside, moved in when complete).
    ``pixel_sizes``: mm per pixel by file name (instead of one ``pixel_size_mm`` for all; a
    file it does not list is skipped). ``reference_hc``: a reference head circumference (mm)
    by file name, written beside the measured one with their difference. Raises ValueError
    naming every bad file when none could be processed."""
    if pixel_sizes is not None and pixel_size_mm is not None:
        raise ValueError("give pixel_size_mm or a pixel-size CSV, not both")
    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite, [BIOMETRY_CSV], PREDICTION_KIND)
    if model.in_channels not in FILE_CHANNELS:
        raise ValueError(
            f"{model.checkpoint_path}: the model takes {model.in_channels} input channels; "
            "src.predict reads grey (1) or RGB (3) image files"
        )
    if head_class_set(model.class_names) is None:
        log.warning("classes %s have no head to measure: no biometry", model.class_names)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_root = staging_dir(out_dir, "tmp")
    try:
        staging = staging_root / out_dir.name
        report = PredictionReport(out_dir)
        for name in ("masks", "overlays"):
            (staging / name).mkdir(parents=True)
        written: dict[str, Path] = {}
        for path in files:
            output_name = f"{path.stem}.png"
            try:
                if output_name in written:
                    raise ValueError(
                        f"{path}: its outputs would be named {output_name} as those of "
                        f"{written[output_name]}; rename one of them"
                    )
                if pixel_sizes is not None and path.name not in pixel_sizes:
                    raise ValueError(f"{path}: not listed in the pixel-size CSV")
                size = pixel_sizes[path.name] if pixel_sizes is not None else pixel_size_mm
                image = read_image(path, model.in_channels)
            except ValueError as error:
                log.error("skipped %s", error)
                report.skipped[str(path)] = str(error)
                continue
            labels, overlay, values = predict_image(
                model,
                image,
                pixel_size_mm=size,
                tta_flip=tta_flip,
                rules=rules,
                robust_biometry=robust_biometry,
                quality_threshold=quality_threshold,
            )
            _write_png(staging / "masks" / output_name, labels)
            _write_png(staging / "overlays" / output_name, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            written[output_name] = path
            report.rows.append(
                {
                    "image": str(path),
                    "mask": f"masks/{output_name}",
                    "overlay": f"overlays/{output_name}",
                    "width": image.shape[1],
                    "height": image.shape[0],
                    "units": "px" if size is None else "mm",
                    **values,
                    **reference_columns(values.get("hc"), (reference_hc or {}).get(path.name)),
                }
            )
        if not report.rows:
            raise ValueError(
                f"no image could be processed ({len(files)} file(s)): "
                + "; ".join(report.skipped.values())
            )
        _write_tables(staging, report)
        replace_dir(out_dir, staging, overwrite, [BIOMETRY_CSV], PREDICTION_KIND)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return report


def _load(ckpt_path, device: str) -> tuple[Segmenter, float | None]:
    """The model (a package folder: torch is never imported; or checkpoints) and the quality
    flag's threshold, for a class set with a head."""
    paths = [ckpt_path] if isinstance(ckpt_path, str | Path) else list(ckpt_path)
    model = load_segmenter(paths, map_location=device)
    measured = head_class_set(model.class_names) is not None
    return model, recorded_threshold(model, paths) if measured else None


def reference_columns(hc: float | None, reference: float | None) -> dict:
    """``hc_reference`` and ``hc_reference_diff`` (measured - reference, mm) of a scan whose
    reference is known; nothing otherwise."""
    if reference is None:
        return {}
    measured = math.nan if hc is None else hc
    return {"hc_reference": reference, "hc_reference_diff": measured - reference}


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _write_tables(folder: Path, report: PredictionReport) -> None:
    rows = pd.DataFrame(report.rows)
    columns = [c for c in dict.fromkeys([*rows.columns, *BIOMETRY_COLUMNS]) if c != "check"]
    rows.reindex(columns=columns).to_csv(folder / BIOMETRY_CSV, index=False)
    if (rows["units"] == "mm").all():
        _write_submission(folder, report)
    if report.skipped:
        skipped = pd.DataFrame({"file": report.skipped.keys(), "reason": report.skipped.values()})
        skipped.to_csv(folder / SKIPPED_CSV, index=False)


def _write_submission(folder: Path, report: PredictionReport) -> None:
    """hc18_submission.csv with a row for every input scan: its ellipse, or empty cells for a
    scan without a head found and for an image file that was skipped (unreadable, or not in
    the pixel-size CSV), so that a short submission cannot go unnoticed; the log counts the
    empty rows by reason (the skipped files' reasons are in skipped.csv)."""
    ellipses = {
        Path(row["image"]).name: {k: row[k] for k in ELLIPSE_FIELDS} if row["head_found"] else None
        for row in report.rows
    }
    skipped = [Path(p).name for p in report.skipped if Path(p).suffix.lower() in IMAGE_SUFFIXES]
    no_head = sum(ellipse is None for ellipse in ellipses.values())
    ellipses |= dict.fromkeys(skipped)
    write_submission(folder / SUBMISSION_CSV, dict(sorted(ellipses.items())))
    if no_head or skipped:
        log.warning(
            "%s: %d rows, %d empty: %d without a head found, %d skipped (reasons in %s)",
            SUBMISSION_CSV,
            len(ellipses),
            no_head + len(skipped),
            no_head,
            len(skipped),
            SKIPPED_CSV,
        )


def predict(
    ckpt_path: str | Path | Sequence[str | Path],
    input_path: str | Path,
    out_dir: str | Path,
    *,
    pixel_size_mm: PixelSize = None,
    pixel_size_csv: str | Path | None = None,
    overwrite: bool = False,
    tta_flip: bool | None = None,
    rules: Mapping[str, Sequence[str]] | None = None,
    robust_biometry: bool = False,
    device: str = "cpu",
) -> PredictionReport:
    """Load the checkpoint (or several, averaged as an ``Ensemble``: e.g. the models of a
    cross-validation's folds), or an exported package folder (``src.export``: no PyTorch
    needed), and predict one image or a folder (see the module docstring). ``tta_flip`` and
    ``rules`` None: as the model was scored (a package's recorded settings, a checkpoint's
    summary.json; else no flips, no rules).
    A UW-Madison GI model (its class set's ``competition_metric``) takes a raw scan layout
    instead and writes masks and the competition's submission CSV
    (``src.inference.volume``)."""
    model, quality_threshold = _load(ckpt_path, device)
    # Unless told otherwise, the model is used as it was scored: a package's recorded
    # settings, a checkpoint's evaluation (its summary.json), else no flips and no rules.
    paths = [ckpt_path] if isinstance(ckpt_path, str | Path) else list(ckpt_path)
    recorded = (
        {"tta_flip": model.tta_flip, "rules": model.postprocess}
        if is_package(model.checkpoint_path)
        else evaluated_settings(paths)
    )
    if tta_flip is None:
        tta_flip = bool(recorded["tta_flip"])
    if rules is None:
        rules = recorded["rules"]
    log.info("flips: %s; post-processing: %s", tta_flip, rules or "none")
    class_set = class_set_for(model.class_names)
    if class_set is not None and class_set.competition_metric == "uwmgi":
        if is_package(model.checkpoint_path):
            raise ValueError(
                f"{model.checkpoint_path}: a UW-Madison scan layout is predicted from the "
                "checkpoint (.ckpt), not from an exported package"
            )
        from src.inference.volume import predict_volume_layout  # torch

        rows = predict_volume_layout(
            model, input_path, out_dir, overwrite=overwrite, tta_flip=tta_flip
        )
        return PredictionReport(Path(out_dir), rows=rows.to_dict("records"))
    # Before the slow part; checked again when the finished folder is moved in.
    check_replaceable(Path(out_dir), overwrite, [BIOMETRY_CSV], PREDICTION_KIND)
    files = list_inputs(input_path)
    pixel_sizes = reference_hc = None
    if pixel_size_csv is not None:
        listed = read_pixel_csv(Path(pixel_size_csv), optional=(HEAD_CIRCUMFERENCE,))
        pixel_sizes = {name: values[PIXEL_SIZE] for name, values in listed.items()}
        # A training CSV's sonographer HC: each scan's measurement is compared with it.
        reference_hc = {
            name: values[HEAD_CIRCUMFERENCE]
            for name, values in listed.items()
            if HEAD_CIRCUMFERENCE in values
        } or None
        # An HC18 training_set folder holds the sonographer's outlines beside the scans.
        outlines = [f for f in files if f.name not in pixel_sizes and f.name.endswith(OUTLINE)]
        if outlines:
            log.info("%d HC18 annotation outline(s) (*%s) left out", len(outlines), OUTLINE)
            files = [f for f in files if f not in outlines]
    report = predict_files(
        model,
        files,
        out_dir,
        pixel_size_mm=pixel_size_mm,
        pixel_sizes=pixel_sizes,
        reference_hc=reference_hc,
        tta_flip=tta_flip,
        rules=rules,
        robust_biometry=robust_biometry,
        overwrite=overwrite,
        quality_threshold=quality_threshold,
    )
    checked = sum(row.get("flagged") is True for row in report.rows)
    log.info(
        "%d image(s) predicted into %s (%d skipped; %d measurement(s) flagged to redo by hand)",
        len(report.rows),
        report.out_dir,
        len(report.skipped),
        checked,
    )
    differences = [abs(r["hc_reference_diff"]) for r in report.rows if "hc_reference_diff" in r]
    if differences:
        measured = [d for d in differences if not math.isnan(d)]
        log.info(
            "|HC - CSV head circumference|: mean %.2f mm, max %.2f mm over %d scan(s); "
            "%d without a head found",
            float(np.mean(measured)) if measured else math.nan,
            max(measured, default=math.nan),
            len(measured),
            len(differences) - len(measured),
        )
    return report


@hydra.main(config_path=src.CONF_DIR, config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    missing = [key for key in ("ckpt_path", "input", "out_dir") if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise SystemExit(
            f"error: {', '.join(missing)} not given: python -m src.predict "
            "ckpt_path=<file.ckpt, [a.ckpt,b.ckpt] or a package folder> input=<image or folder> "
            "out_dir=<folder>"
        )
    config = OmegaConf.to_container(cfg, resolve=True)  # plain values: a [row, col] list
    predict(
        config["ckpt_path"],
        cfg.input,
        cfg.out_dir,
        pixel_size_mm=config["pixel_size_mm"],
        pixel_size_csv=cfg.pixel_size_csv,
        overwrite=cfg.overwrite,
        tta_flip=cfg.tta_flip,
        rules=config["postprocess"],
        robust_biometry=cfg.robust_biometry,
        device=cfg.device,
    )


if __name__ == "__main__":
    main()
