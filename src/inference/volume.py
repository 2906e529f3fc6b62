"""Prediction on a raw UW-Madison GI layout: every slice of every case-day, 2.5D as trained,
masks and the competition's submission CSV (``src.predict`` calls it for the class sets whose
``competition_metric`` is ``uwmgi``).

    ROOT/[train|test/]case<N>/case<N>_day<D>/scans/slice_<SSSS>_<W>_<H>_<pw>_<ph>.png

Slices are scaled to 8 bits per case-day as the reader does (``read_volumes``), stacked with
their neighbours as the checkpoint's ``context`` says (``src.data.context``), predicted at their
original size (sigmoid > 0.5 per organ) and written as ``OUT/masks/<id>.png`` (uint8 bitmask,
``src.data.classes``) and ``OUT/submission.csv`` (``id,class,predicted``, one row per slice and
organ, RLE as ``rle_encode``: row-major, 1-based; empty where nothing is predicted).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import cv2
import pandas as pd

from src.data.classes import from_bitmask
from src.data.context import context_ids, stack_channels
from src.data.prepared import check_replaceable, replace_dir
from src.data.readers.uwmgi import read_volumes, write_submission
from src.inference.checkpoint import RestoredModel
from src.inference.predictor import predict_labels

log = logging.getLogger(__name__)

SUBMISSION_NAME = "submission.csv"  # also the mark of such a prediction folder
KIND = "UW-Madison GI prediction folder"


def predict_volume_layout(
    model: RestoredModel,
    root: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    tta_flip: bool = False,
) -> pd.DataFrame:
    """Predict every scan under ``root`` into ``out_dir`` (built aside, moved in complete; an
    existing folder is replaced only with ``overwrite`` and only if it is such a folder).
    Returns the submission rows."""
    root, out_dir = Path(root), Path(out_dir)
    check_replaceable(out_dir, overwrite, [SUBMISSION_NAME], KIND)
    if not model.multilabel:
        raise ValueError(f"{model.checkpoint_path}: a multi-label (sigmoid) model was expected")
    slices = read_volumes(root)
    if not slices:
        raise ValueError(
            f"{root}: no scan found (expected [train|test/]case*/case*_day*/scans/slice_*.png)"
        )
    context = model.context or {}
    k = int(context.get("context_slices", 0))
    index = pd.DataFrame(
        [{"image": i, "case_day": s["case_day"], "slice": s["slice"]} for i, s in slices.items()]
    )
    channels_of = context_ids(index, "case_day", "slice", k)
    expected = k * 2 + 1
    if expected != model.in_channels:
        raise ValueError(
            f"{model.checkpoint_path} takes {model.in_channels} channels, its context "
            f"({k} slices each side) gives {expected}"
        )
    foreground = model.class_names[1:]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_root = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        staging = staging_root / out_dir.name
        (staging / "masks").mkdir(parents=True)
        rows = []
        for slice_id in sorted(slices, key=lambda i: (slices[i]["case_day"], slices[i]["slice"])):
            image = stack_channels([slices[c]["image"] for c in channels_of[slice_id]])
            bitmask = predict_labels(
                model.net, image, model.image_size, tta_flip=tta_flip, multilabel=True
            )
            if not cv2.imwrite(str(staging / "masks" / f"{slice_id}.png"), bitmask):
                raise OSError(f"could not write the mask of {slice_id}")
            channels = from_bitmask(bitmask, len(foreground))
            rows += [(slice_id, name, channels[c]) for c, name in enumerate(foreground)]
        write_submission(staging / SUBMISSION_NAME, rows)
        replace_dir(out_dir, staging, overwrite, [SUBMISSION_NAME], KIND)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    log.info("%d slices of %s predicted into %s", len(slices), root, out_dir)
    return pd.read_csv(out_dir / SUBMISSION_NAME, keep_default_na=False)
