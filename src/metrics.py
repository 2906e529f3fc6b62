"""The one metrics module used by training, evaluation and reports: Dice and IoU per image.

Inputs. ``preds`` is either a label map (B, H, W) of integer class ids or scores (B, C, H, W)
(logits or probabilities), which are argmax'ed over C here; ``target`` is a label map
(B, H, W). Scores are accepted so a LightningModule can pass its logits unchanged.

Per image and per *foreground* class (background, label 0, is not scored: it dominates
every image and would inflate every mean), torchmetrics computes
Dice = 2|P∩T| / (|P|+|T|) and IoU = |P∩T| / |P∪T|.

Empty-class rule (nnU-Net's convention):
- class absent from both target and prediction of an image -> NaN for that image, and
  that image is left out of the class's mean (nothing to find, nothing wrongly found);
- class absent from the target but predicted, or present but not predicted -> 0.

Multi-label data (classes may overlap; ``multilabel=True``): ``preds`` are sigmoid scores
(B, K, H, W) (logits: a class is predicted where its probability > 0.5, i.e. logit > 0), 0/1
channels (B, K, H, W) or bitmask maps (B, H, W) (``src.data.classes``), ``target`` channels
or bitmasks; each of the K foreground classes is scored on its own channel with the same
Dice, IoU and empty-class rule. ``decide`` is the one place logits become predictions.

Aggregation. Class mean = nanmean over images. ``dice_mean`` / ``iou_mean`` = nanmean over
the foreground class means, so a class absent from every image of a set (e.g. CSP in a
tiny validation set) has a NaN class mean and is left out of ``*_mean``, which stays
defined from the other classes; it is NaN only when no class is defined (or no image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.functional.segmentation import dice_score, mean_iou
from torchmetrics.utilities import dim_zero_cat

# The empty-class rule in one sentence, recorded in every summary.json.
EMPTY_MASK_RULE = (
    "per image and class: absent from both target and prediction -> NaN (null in JSON), left "
    "out of that class's mean over images; absent from one of them -> 0. Class mean = nanmean "
    "over images; dice_mean/iou_mean = nanmean over the foreground class means."
)


def decide(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Logits (B, C, H, W) -> predictions: the argmax label map (B, H, W) (softmax), or the
    (B, K, H, W) booleans sigmoid > 0.5, i.e. logit > 0 (multi-label)."""
    return logits > 0 if multilabel else logits.argmax(dim=1)


def per_image_scores(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, multilabel: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return Dice and IoU, each (B, num_classes - 1): per image, per foreground class."""
    if multilabel:
        return _multilabel_scores(preds, target, num_classes - 1)
    preds = _label_map(preds, target, num_classes)
    target = target.long()
    dice = dice_score(
        preds,
        target,
        num_classes,
        include_background=False,
        average="none",
        input_format="index",
    )
    iou = mean_iou(
        preds,
        target,
        num_classes,
        include_background=False,
        per_class=True,
        input_format="index",
    )
    # mean_iou writes -1 (where dice_score writes NaN) for a class absent from both maps;
    # turn it back into NaN so both metrics follow the one empty-class rule.
    iou = torch.where(iou < 0, torch.nan, iou)
    return dice, iou


def _channels(values: torch.Tensor, num_foreground: int, name: str) -> torch.Tensor:
    """(B, K, H, W) 0/1 channels of multi-label ``values``: logits (> 0), booleans, or
    bitmask maps (B, H, W)."""
    if values.ndim == 3 and not values.is_floating_point():
        bits = torch.arange(num_foreground, device=values.device).view(1, -1, 1, 1)
        return (values.long().unsqueeze(1) >> bits) & 1
    if values.ndim != 4 or values.shape[1] != num_foreground:
        raise ValueError(
            f"multi-label {name} must be (B, {num_foreground}, H, W) channels or a (B, H, W) "
            f"bitmask map, got shape {tuple(values.shape)}"
        )
    if values.is_floating_point() and name == "preds":
        return (values > 0).long()
    return (values > 0.5 if values.is_floating_point() else values != 0).long()


def _multilabel_scores(
    preds: torch.Tensor, target: torch.Tensor, num_foreground: int
) -> tuple[torch.Tensor, torch.Tensor]:
    preds = _channels(preds, num_foreground, "preds")
    target = _channels(target, num_foreground, "target")
    if preds.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ")
    # Every channel is a class here (no background channel), so include_background=True.
    options = {"include_background": True, "input_format": "one-hot"}
    dice = dice_score(preds, target, num_foreground, average="none", **options)
    iou = mean_iou(preds, target, num_foreground, per_class=True, **options)
    return dice, torch.where(iou < 0, torch.nan, iou)


def summarize(
    dice: torch.Tensor, iou: torch.Tensor, foreground_names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Aggregate per-image (N, K) scores into ``dice_<class>``, ``dice_mean``, ``iou_*``."""
    summary: dict[str, torch.Tensor] = {}
    for metric_name, scores in (("dice", dice), ("iou", iou)):
        class_means = torch.nanmean(scores, dim=0)
        for class_name, class_mean in zip(foreground_names, class_means, strict=True):
            summary[f"{metric_name}_{class_name}"] = class_mean
        summary[f"{metric_name}_mean"] = torch.nanmean(class_means)
    return summary


class SegmentationMetrics(Metric):
    """Per-image Dice/IoU accumulated over a set; see the module docstring for the rules.

    ``class_names`` includes background at index 0 (e.g. ``FETAL_HEAD.names``). States are
    the per-image (N, K) score tables, concatenated across processes under DDP.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, class_names: Sequence[str], multilabel: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.multilabel = multilabel
        if len(class_names) < 2:
            raise ValueError(
                "SegmentationMetrics needs background plus at least one foreground class, "
                f"got class_names={tuple(class_names)}"
            )
        self.class_names = tuple(class_names)
        self.foreground_names = self.class_names[1:]
        self.add_state("dice", default=[], dist_reduce_fx="cat")
        self.add_state("iou", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        dice, iou = per_image_scores(preds, target, len(self.class_names), self.multilabel)
        self.dice.append(dice)
        self.iou.append(iou)

    def compute(self) -> dict[str, torch.Tensor]:
        return summarize(*self._score_tables(), self.foreground_names)

    def per_image(self) -> list[dict[str, float]]:
        """One dict per image, in update order: ``{"dice_<class>": float, "iou_<class>": ...}``.

        NaN (class absent from both maps) is kept. Under DDP the images of all processes
        are gathered, in process order.
        """
        with self.sync_context():
            dice, iou = self._score_tables()
        keys = [f"{metric}_{name}" for metric in ("dice", "iou") for name in self.foreground_names]
        rows = torch.cat([dice, iou], dim=1).tolist()
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def _score_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.dice, list) and not self.dice:
            empty = torch.empty(0, len(self.foreground_names), device=self.device)
            return empty, empty
        return dim_zero_cat(self.dice), dim_zero_cat(self.iou)


def _label_map(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Check shapes and label ranges; argmax scores (B, C, H, W) into a label map (B, H, W)."""
    if target.ndim != 3 or target.is_floating_point():
        raise ValueError(
            f"target must be an integer label map (B, H, W), got shape {tuple(target.shape)} "
            f"and dtype {target.dtype}"
        )
    if preds.ndim == 4:
        if preds.shape[1] != num_classes:
            raise ValueError(
                f"preds scores must have {num_classes} channels (B, C, H, W), "
                f"got shape {tuple(preds.shape)}"
            )
        preds = preds.argmax(dim=1)
    elif preds.is_floating_point():
        raise ValueError(f"preds label map must be integer, got dtype {preds.dtype}")
    if preds.shape != target.shape:
        raise ValueError(
            f"preds {tuple(preds.shape)} and target {tuple(target.shape)} must have the same "
            "(B, H, W) shape"
        )
    for name, labels in (("preds", preds), ("target", target)):
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"{name} holds labels outside [0, {num_classes - 1}]: "
                f"min {int(labels.min())}, max {int(labels.max())}"
            )
    return preds.long()
