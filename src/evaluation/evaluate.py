"""Score a network on prepared images at their original size: Dice, IoU, surface distances and
biometry per image, post-processing chosen on validation data, aggregates per class and per
stratum (the data's stratification column: plane, head-size tertile). Pure of Lightning and
Hydra: entry points pass the network and the split (``evaluate_split``) or the index rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from src.biometry import measure_class_set
from src.data.classes import (
    ClassSet,
    class_mask,
    class_set_for,
    from_bitmask,
    head_class_set,
)
from src.data.context import context_ids, stack_channels
from src.data.images import read_image
from src.data.prepared import pixel_size_of, read_index, read_original
from src.data.splits import PreparedSplit
from src.ellipse import ELLIPSE_FIELDS
from src.evaluation.agreement import difference_stats
from src.evaluation.surface import CASES, class_surface_distances
from src.evaluation.uwmgi_metric import competition_score
from src.evaluation.volumes import slice_counts, volume_sections
from src.inference.postprocess import check_rules, postprocess
from src.inference.predictor import predict_views
from src.inference.quality import (
    FLAG_SHARE,
    QUALITY_VIEWS,
    calibrate_threshold,
    hc_spread,
    is_flagged,
)
from src.inference.views import labels_from_logits, tta_views
from src.metrics import per_image_scores, summarize

log = logging.getLogger(__name__)
# A progress line at most this often while images are predicted at their original size.
PROGRESS_EVERY_S = 20.0

# Tried per class by ``postprocess="auto"``; a class keeps the one that raises its mean
# validation Dice most, or none.
AUTO_CANDIDATES = (
    ("keep_largest_component",),
    ("fill_holes",),
    ("keep_largest_component", "fill_holes"),
)
DISTANCES = ("hd95_px", "assd_px", "hd95_mm", "assd_mm")
BIOMETRY_QUANTITIES = ("hc", "bpd", "ofd", "csp_width", "lv_width")
# index.csv's head circumference of HC18 (the sonographer's value, mm), where there is one.
REFERENCE_HC = "hc_mm"


class Prediction(NamedTuple):
    """One image at its original size: its index row, truth and raw predicted labels, and,
    where the quality score is computed, the label map of every ``QUALITY_VIEWS`` view."""

    row: dict
    truth: np.ndarray
    labels: np.ndarray
    view_labels: list[np.ndarray] | None = None


def predict_rows(
    net: nn.Module,
    rows: pd.DataFrame,
    prepared_dir: Path,
    image_size: tuple[int, int],
    *,
    tta_flip: bool,
    in_channels: int = 1,
    multilabel: bool = False,
    channels_of: Mapping[str, Sequence[str]] | None = None,
    quality: bool = False,
) -> list[Prediction]:
    """One ``Prediction`` per row. ``in_channels``: of each image file; ``channels_of``: per
    image, the images stacked as its input (2.5D, ``src.data.context.context_ids``);
    ``multilabel``: truth and prediction are bitmasks; ``quality``: also the views' labels
    (the prediction is still the mean of the test-time views, which come first)."""
    predicted = []
    prediction_views = tta_views(tta_flip)
    views = QUALITY_VIEWS if quality else prediction_views
    assert views[: len(prediction_views)] == prediction_views
    records = rows.to_dict("records")
    started = last_said = time.monotonic()
    for done, row in enumerate(records):
        if time.monotonic() - last_said > PROGRESS_EVERY_S:  # minutes pass on a CPU
            last_said = time.monotonic()
            log.info(
                "predicting at the original size: %d/%d images (%.0f s)",
                done,
                len(records),
                last_said - started,
            )
        image, truth = read_original(prepared_dir, row, in_channels)
        if channels_of is not None:
            image = stack_channels(
                [
                    image if name == row["image"] else read_image(prepared_dir / name, in_channels)
                    for name in channels_of[row["image"]]
                ]
            )
        logits = predict_views(net, image, image_size, views).numpy()
        labels = labels_from_logits(logits[: len(prediction_views)].mean(0), multilabel=multilabel)
        view_labels = [labels_from_logits(v) for v in logits] if quality else None
        predicted.append(Prediction(row, truth, labels, view_labels))
    return predicted


def dice_per_image(labels: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """(K,) foreground Dice of one image (src.metrics: the one Dice of the project)."""
    dice, _ = per_image_scores(
        torch.from_numpy(labels[None].astype(np.int64)),
        torch.from_numpy(truth[None].astype(np.int64)),
        num_classes,
    )
    return dice[0].numpy()


def choose_postprocess(predicted: Sequence[Prediction], class_names: Sequence[str]) -> dict:
    """Per class, the candidate rules that raise its mean Dice over ``predicted`` (the
    validation images) the most; none where nothing helps. Returns the decision record:
    ``rules`` and the mean Dice of every candidate. A rule changes only its own class (and
    background), so classes are decided independently."""
    names = list(class_names)
    candidates = {"none": ()} | {"+".join(rules): rules for rules in AUTO_CANDIDATES}
    means: dict[str, dict[str, float]] = {name: {} for name in names[1:]}
    for key, steps in candidates.items():
        per_class = [
            [
                dice_per_image(
                    postprocess(labels, {name: list(steps)}, names) if steps else labels,
                    truth,
                    len(names),
                )[k]
                for _, truth, labels, _ in predicted
            ]
            for k, name in enumerate(names[1:])
        ]
        for name, scores in zip(names[1:], per_class, strict=True):
            finite = [s for s in scores if not math.isnan(s)]
            means[name][key] = float(np.mean(finite)) if finite else math.nan
    rules = {}
    for name, by_candidate in means.items():
        best = max(
            (key for key in candidates if key != "none" and not math.isnan(by_candidate[key])),
            key=by_candidate.get,
            default=None,
        )
        if best is not None and by_candidate[best] > by_candidate["none"]:
            rules[name] = list(candidates[best])
    return {"rules": rules, "mean_dice_by_candidate": means}


def resolve_postprocess(
    setting: str | Mapping,
    class_names: Sequence[str],
    validation: Sequence[Prediction] | None,
) -> dict:
    """``"none"``, explicit per-class rules, or ``"auto"`` (decided on ``validation``):
    the record written to summary.json, with the ``rules`` to apply."""
    if setting == "none":
        return {"mode": "none", "rules": {}}
    if setting == "auto":
        if not validation:
            log.warning("postprocess=auto: no validation images; no post-processing")
            return {"mode": "auto", "rules": {}, "decided_on": "no validation images"}
        decision = choose_postprocess(validation, class_names)
        log.info("postprocess=auto chose %s on %d val images", decision["rules"], len(validation))
        return {"mode": "auto", "decided_on": f"val ({len(validation)} images)", **decision}
    if isinstance(setting, Mapping):
        rules = {str(name): [str(step) for step in steps] for name, steps in setting.items()}
        check_rules(rules, class_names)
        return {"mode": "given", "rules": rules}
    raise ValueError(
        f"postprocess={setting!r}: expected auto, none or per-class rules such as "
        "{brain: [keep_largest_component, fill_holes]}"
    )


def score_image(
    row: Mapping,
    truth: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    robust_biometry: bool = False,
    multilabel: bool = False,
) -> dict:
    """One per-image row: index info, per-class Dice, IoU, case and distances, biometry.
    ``multilabel``: ``truth`` and ``labels`` are bitmask maps (``src.data.classes``)."""
    pixel_size = pixel_size_of(row)
    out: dict = {"id": row["image"], **{k: v for k, v in row.items() if k not in ("image", "mask")}}
    out["pixel_size_mm"] = pixel_size
    dice, iou = per_image_scores(
        torch.from_numpy(labels[None].astype(np.int64)),
        torch.from_numpy(truth[None].astype(np.int64)),
        len(class_names),
        multilabel,
    )
    for k, name in enumerate(class_names[1:]):
        label = k + 1
        case, hd95, assd = class_surface_distances(
            class_mask(labels, label, multilabel), class_mask(truth, label, multilabel)
        )
        # index.csv's pixel size is isotropic, so mm = px x size (surface.py takes a
        # (row, col) spacing where it is not).
        mm = pixel_size if pixel_size is not None else math.nan
        out |= {
            f"dice_{name}": float(dice[0, k]),
            f"iou_{name}": float(iou[0, k]),
            f"case_{name}": case,
            f"hd95_px_{name}": hd95,
            f"assd_px_{name}": assd,
            f"hd95_mm_{name}": hd95 * mm,
            f"assd_mm_{name}": assd * mm,
        }
        # Pixel counts, pooled per volume and per slice by src.evaluation.volumes.
        out |= slice_counts(
            name, class_mask(truth, label, multilabel), class_mask(labels, label, multilabel)
        )
    class_set = class_set_for(class_names)
    if class_set is not None and class_set.head_labels:
        reference = row.get(REFERENCE_HC)
        reference = None if reference is None or pd.isna(reference) else float(reference)
        out |= biometry_columns(truth, labels, pixel_size, class_set, reference, robust_biometry)
    return out


def biometry_columns(
    truth: np.ndarray,
    labels: np.ndarray,
    pixel_size: float | None,
    class_set: ClassSet,
    reference_hc: float | None = None,
    robust: bool = False,
) -> dict:
    """``<quantity>_true``, ``_pred``, ``_diff`` (pred - true; NaN unless both measured), the
    units, the fit-geometry ``check`` of the truth (annotation QA), the predicted ellipse
    (``ellipse_*``) and, given a ``reference_hc`` in mm, ``hc_reference`` and
    ``hc_reference_diff`` (pred - reference)."""
    measured = {
        # The truth is an ellipse already: the robust refit is for predictions only.
        which: measure_class_set(mask, class_set, pixel_size, robust=robust and which == "pred")
        for which, mask in (("true", truth), ("pred", labels))
    }
    out: dict = {"biometry_units": "px" if pixel_size is None else "mm"}
    # Against the value the sonographer wrote down (HC18's CSV), not the mask's own ellipse.
    reference = reference_hc if pixel_size is not None else None
    out["hc_reference"] = math.nan if reference is None else float(reference)
    for which, biometry in measured.items():
        head = biometry.head if biometry else None
        values = {
            "hc": head and head.hc,
            "bpd": head and head.bpd,
            "ofd": head and head.ofd,
            "csp_width": biometry and biometry.csp_width,
            "lv_width": biometry and biometry.lv_width,
        }
        for quantity, value in values.items():
            out[f"{quantity}_{which}"] = math.nan if value is None else float(value)
        if which == "true":
            # Annotation QA: the true outline is not an ellipse the image supports. A
            # prediction's trust is its quality score (src.inference.quality) instead: a
            # wrong predicted head is a smooth ellipse this geometry cannot tell apart.
            out["check_true"] = None if head is None else bool(head.check)
        if which == "pred":
            out |= {
                f"ellipse_{k}": math.nan if head is None else getattr(head, k)
                for k in ELLIPSE_FIELDS
            }
        # The two quantities behind ``check`` (see src.biometry), to calibrate it on real data.
        out[f"unsupported_fraction_{which}"] = (
            math.nan if head is None else head.unsupported_fraction
        )
        out[f"max_residual_rel_{which}"] = math.nan if head is None else head.max_residual_rel
    for quantity in BIOMETRY_QUANTITIES:
        out[f"{quantity}_diff"] = out[f"{quantity}_pred"] - out[f"{quantity}_true"]
    out["hc_reference_diff"] = out["hc_pred"] - out["hc_reference"]
    return out


def aggregate(rows: Sequence[dict], class_names: Sequence[str]) -> dict:
    """``mean`` and ``per_class`` (metrics and case counts) over ``rows``."""
    foreground = list(class_names[1:])
    table = pd.DataFrame(list(rows))
    dice = torch.tensor(table[[f"dice_{n}" for n in foreground]].to_numpy(np.float64))
    iou = torch.tensor(table[[f"iou_{n}" for n in foreground]].to_numpy(np.float64))
    metrics = {key: float(value) for key, value in summarize(dice, iou, foreground).items()}
    for distance in DISTANCES:
        class_means = [_nanmean(table[f"{distance}_{name}"]) for name in foreground]
        metrics |= {f"{distance}_{n}": m for n, m in zip(foreground, class_means, strict=True)}
        metrics[f"{distance}_mean"] = _nanmean(pd.Series(class_means, dtype=float))
    counts = {
        name: {case: int((table[f"case_{name}"] == case).sum()) for case in CASES}
        for name in foreground
    }
    return {"metrics": metrics, "counts": counts}


def biometry_summary(rows: Sequence[dict]) -> dict:
    """Per units (mm, px): difference stats of each quantity over images measured in both
    truth and prediction, how many were measured where, and the ``check`` counts."""
    table = pd.DataFrame(list(rows))
    if "hc_true" not in table:
        return {}
    out = {}
    for units, group in table.groupby("biometry_units"):
        true_ok, pred_ok = group["hc_true"].notna(), group["hc_pred"].notna()
        record: dict = {
            "num_images": len(group),
            "head_measured": {
                "both": int((true_ok & pred_ok).sum()),
                "truth_only": int((true_ok & ~pred_ok).sum()),
                "prediction_only": int((~true_ok & pred_ok).sum()),
                "neither": int((~true_ok & ~pred_ok).sum()),
            },
            "check_flagged": {
                "truth": int((group["check_true"] == True).sum()),  # noqa: E712 (None: no head)
            },
            "differences": {},
        }
        for quantity in BIOMETRY_QUANTITIES:
            both = group[[f"{quantity}_true", f"{quantity}_pred"]].dropna()
            if len(both):
                stats = difference_stats(both.iloc[:, 0], both.iloc[:, 1])
                record["differences"][quantity] = asdict(stats)
        with_reference = group[group["hc_reference"].notna()] if "hc_reference" in group else []
        if len(with_reference):
            # HC18's measure: |predicted HC - the sonographer's HC| (mm); an image whose
            # prediction has no head has no HC and is counted, not averaged.
            both = with_reference[["hc_reference", "hc_pred"]].dropna()
            record["hc_vs_reference"] = {
                "images": len(with_reference),
                "prediction_missing": len(with_reference) - len(both),
                **(asdict(difference_stats(both.iloc[:, 0], both.iloc[:, 1])) if len(both) else {}),
            }
        out[str(units)] = record
    return out


def summarize_rows(
    rows: Sequence[dict], class_names: Sequence[str], strata_column: str | None = None
) -> dict:
    """Aggregates over all rows and per value of ``strata_column`` (the data's stratification
    column, e.g. plane): metrics, counts, biometry."""
    overall = aggregate(rows, class_names)
    groups = {}
    for stratum in dict.fromkeys(row.get(strata_column) for row in rows) if strata_column else ():
        subset = [row for row in rows if row.get(strata_column) == stratum]
        part = aggregate(subset, class_names)
        groups[str(stratum)] = {
            "num_images": len(subset),
            "mean": {k: v for k, v in part["metrics"].items() if k.endswith("_mean")},
            "per_class": per_class_record(part, class_names),
            "biometry": biometry_summary(subset),
        }
    return {
        **overall,
        "per_class": per_class_record(overall, class_names),
        "per_stratum": {"column": strata_column, "groups": groups},
        "biometry": biometry_summary(rows),
    }


def per_class_record(part: dict, class_names: Sequence[str]) -> dict:
    metrics = part["metrics"]
    return {
        name: {
            **{m: metrics[f"{m}_{name}"] for m in ("dice", "iou", *DISTANCES)},
            "counts": part["counts"][name],
        }
        for name in class_names[1:]
    }


def evaluate(
    net: nn.Module,
    rows: pd.DataFrame,
    prepared_dir: Path,
    class_names: Sequence[str],
    image_size: tuple[int, int],
    *,
    tta_flip: bool = False,
    postprocess_setting: str | Mapping = "auto",
    validation_rows: pd.DataFrame | None = None,
    strata_column: str | None = None,
    robust_biometry: bool = False,
    in_channels: int = 1,
    multilabel: bool = False,
    context_slices: int = 0,
    volume_column: str | None = None,
    slice_column: str | None = None,
    quality_threshold: float | None = None,
) -> dict:
    """Predict ``rows`` at their original size, post-process, score. Returns ``rows`` (one
    dict per image, in the given order), the aggregates of ``summarize_rows``,
    ``postprocess`` (the decision record) and ``settings``.

    ``in_channels``: of each image file. ``multilabel``: sigmoid outputs and bitmask masks
    (no post-processing: its rules act on label maps). ``context_slices``: 2.5D input, the
    neighbours found in the whole index.csv by ``volume_column`` and ``slice_column``; the
    class set's ``competition_metric`` (UW-Madison GI) is scored per volume, as
    ``competition``. ``quality_threshold``: the quality flag's threshold as calibrated before
    (external data); None: calibrated on ``validation_rows``."""
    net.eval()
    class_set = class_set_for(class_names)
    if multilabel and postprocess_setting not in ("auto", "none"):
        raise ValueError(
            f"postprocess={postprocess_setting}: the per-class rules act on label maps; "
            "multi-label masks take postprocess=none"
        )
    if multilabel:
        postprocess_setting = "none"
    channels_of = (
        context_ids(read_index(prepared_dir), volume_column, slice_column, context_slices)
        if context_slices
        else None
    )
    options = {"in_channels": in_channels, "multilabel": multilabel, "channels_of": channels_of}
    # The quality score of head measurements (src.inference.quality), its threshold
    # calibrated on the validation images.
    options["quality"] = quality = head_class_set(class_names) is not None and not multilabel
    validation = None
    wanted = postprocess_setting == "auto" or (quality and quality_threshold is None)
    if wanted and validation_rows is not None and len(validation_rows):
        validation = predict_rows(
            net, validation_rows, prepared_dir, image_size, tta_flip=tta_flip, **options
        )
    decision = resolve_postprocess(postprocess_setting, class_names, validation)
    threshold = quality_threshold
    calibrated_on = "given (calibrated before)"
    if quality and threshold is None and validation:
        calibrated_on = f"val ({len(validation)} images), flags the worst {FLAG_SHARE:.0%} of them"
        threshold = calibrate_threshold(
            [quality_score(p, class_names, decision["rules"]) for p in validation]
        )
    scored = []
    predicted = predict_rows(net, rows, prepared_dir, image_size, tta_flip=tta_flip, **options)
    for prediction in predicted:
        labels = prediction.labels
        if decision["rules"]:
            labels = postprocess(labels, decision["rules"], class_names)
        row = score_image(
            prediction.row,
            prediction.truth,
            labels,
            class_names,
            robust_biometry=robust_biometry,
            multilabel=multilabel,
        )
        if quality:
            score = quality_score(prediction, class_names, decision["rules"])
            row |= {"quality_score": score, "flagged": is_flagged(score, threshold)}
        scored.append(row)
    competition = None
    if class_set is not None and class_set.competition_metric == "uwmgi":
        competition = uwmgi_competition(predicted, class_names, volume_column, slice_column)
    return {
        "rows": scored,
        **summarize_rows(scored, class_names, strata_column),
        "postprocess": decision,
        **({"quality": quality_summary(scored, threshold, calibrated_on)} if quality else {}),
        "settings": {
            "resolution": "original (index.csv orig_width x orig_height)",
            "model_input_size": list(image_size),
            "tta_flip": tta_flip,
            "robust_biometry": robust_biometry,
            "postprocess": postprocess_setting
            if isinstance(postprocess_setting, str)
            else dict(postprocess_setting),
            "multilabel": multilabel,
            "context_slices": context_slices,
        },
        **({"competition": competition} if competition is not None else {}),
        # Per-volume Dice and slice detection where slices form volumes (data.volume_column).
        **volume_sections(scored, class_names[1:], volume_column),
    }


def quality_score(
    prediction: Prediction, class_names: Sequence[str], rules: Mapping[str, Sequence[str]]
) -> float:
    """The HC spread over the quality views of one prediction (mm, or px without a pixel
    size), each view post-processed like the prediction."""
    return hc_spread(prediction.view_labels, class_names, pixel_size_of(prediction.row), rules)


def quality_summary(rows: Sequence[dict], threshold: float | None, calibrated_on: str) -> dict:
    """What the quality flag did on these images: the threshold and where it was chosen, how
    many images it flags, the head-circumference error (against the sonographer's HC where
    there is one, else the true mask's) of the flagged and unflagged ones, and the Spearman
    correlation of score and error."""
    table = pd.DataFrame(list(rows))
    reference = "hc_reference_diff" if table["hc_reference_diff"].notna().any() else "hc_diff"
    error = table[reference].abs()
    flagged = table["flagged"] == True  # noqa: E712 (None: no threshold or no head)
    unflagged = table["flagged"] == False  # noqa: E712
    scores = table["quality_score"].replace(np.inf, np.nan)
    both = pd.DataFrame({"score": table["quality_score"], "error": error}).dropna()
    return {
        "score": "max - min head circumference over the views "
        + ", ".join(f"flip={v.flip} zoom={v.zoom:g}" for v in QUALITY_VIEWS),
        "threshold": threshold,
        "calibrated_on": calibrated_on if threshold is not None else "no validation images",
        "error": f"|{reference}|",
        "images": len(table),
        "flagged": int(flagged.sum()),
        "flagged_share": float(flagged.mean()) if len(table) else math.nan,
        "error_flagged_mean": _nanmean(error[flagged]),
        "error_unflagged_mean": _nanmean(error[unflagged]),
        "score_median": float(scores.median()) if scores.notna().any() else math.nan,
        "spearman_score_error": float(both["score"].corr(both["error"], method="spearman"))
        if len(both) > 2
        else math.nan,
    }


def evaluate_split(
    net: nn.Module,
    source: PreparedSplit,
    splits: Sequence[str],
    *,
    image_size: tuple[int, int],
    multilabel: bool,
    tta: bool,
    robust_biometry: bool,
    postprocess: str | Mapping,
    quality_threshold: float | None = None,
) -> dict:
    """``evaluate`` of the rows of ``splits`` (in that order) of a prepared dataset, by a
    network taking ``image_size`` inputs; ``postprocess="auto"`` decides on its val split, and
    the quality flag's threshold is calibrated there unless ``quality_threshold`` is given.
    Nothing is decided on scored images: where ``splits`` include val, no validation rows are
    passed (the caller gives the rules and threshold decided before, or goes without).
    The one way ``src.train``'s test after fitting and ``src.eval`` score a checkpoint."""
    rows = pd.concat([source.split_rows(split) for split in splits])
    return evaluate(
        net,
        rows.reset_index(drop=True),
        source.prepared_dir,
        source.class_names,
        image_size,
        tta_flip=tta,
        robust_biometry=robust_biometry,
        # A config's mapping as plain lists (summary.json records the setting).
        postprocess_setting=postprocess
        if isinstance(postprocess, str)
        else {name: list(rules) for name, rules in postprocess.items()},
        validation_rows=None if "val" in splits else source.split_rows("val"),
        strata_column=source.stratify_column,
        in_channels=source.in_channels,
        multilabel=multilabel,
        context_slices=source.context_slices,
        volume_column=source.volume_column,
        slice_column=source.slice_column,
        quality_threshold=quality_threshold,
    )


def uwmgi_competition(
    predicted: Sequence[Prediction],
    class_names: Sequence[str],
    volume_column: str | None,
    slice_column: str | None,
) -> dict | None:
    """The UW-Madison GI competition score (``src.evaluation.uwmgi_metric``) of bitmask
    predictions, per volume (``volume_column``) in slice order; None without the columns."""
    if not (volume_column and slice_column):
        log.warning("no data.volume_column/slice_column: the competition score is left out")
        return None
    num_foreground = len(class_names) - 1
    volumes: dict[str, list] = {}
    for row, truth, labels, _ in predicted:
        volumes.setdefault(str(row[volume_column]), []).append((row[slice_column], labels, truth))
    stacks = {}
    for name, slices in volumes.items():
        slices.sort(key=lambda item: item[0])
        stacks[name] = (
            [from_bitmask(labels, num_foreground) for _, labels, _ in slices],
            [from_bitmask(truth, num_foreground) for _, _, truth in slices],
        )
    return competition_score(stacks, class_names[1:])


def _nanmean(values: pd.Series) -> float:
    finite = values.dropna()
    return float(finite.mean()) if len(finite) else math.nan
