"""Segmentation losses: ``loss(logits (B, C, H, W), target (B, H, W) long) -> scalar``.

The losses themselves are smp's (DiceLoss, FocalLoss, TverskyLoss, Lovasz-Softmax) and torch's
(CrossEntropyLoss), configured in ``conf/loss``. Written here is only what no library offers:
one spelling of the class options every config shares (``with_class_options``), the class
choice smp's LovaszLoss does not expose (``LovaszSoftmaxLoss``) and weighted sums of losses
(``CombinedLoss``).

What each config computes (smp 0.6; ``w`` = ``class_weights``, over the included classes):

- ``dice``: per class, over the whole batch, ``1 - 2 sum(p t) / (sum p + sum t)`` with
  ``p = softmax(logits)``. A class absent from the batch's target adds 0 but still counts in
  the mean over classes; with weights the mean is ``sum(w loss) / sum(w)``.
- ``tversky``: as ``dice`` with ``1 - TP / (TP + alpha FP + beta FN)``, the mean raised to
  ``gamma``; alpha = beta = 0.5 is Dice, beta > alpha favours recall of the small CSP/LV.
- ``ce``: torch's mean over pixels of ``-log p[true class]``; with weights the weighted mean
  ``sum(w[y] loss) / sum(w[y])`` over pixels.
- ``focal``: smp's multiclass focal is one-vs-rest, not softmax: for each class c a *binary*
  focal loss ``(1 - p_t)^gamma BCE`` on ``sigmoid(logit_c)`` against ``target == c``, mean over
  pixels, then the (weighted) mean over classes. ``alpha: null``: smp's binary alpha would
  weigh every class's positives against its negatives. Its sigmoid differs from the softmax of
  the other terms, which leaves the argmax used at inference unchanged.
- ``lovasz``: the mean, over the included classes present in the batch, of the Lovasz
  extension of ``1 - IoU`` on softmax probabilities; no class weights (see the class).
- ``dice_ce``, ``dice_focal``: ``CombinedLoss`` of the configs above, each weight 1.
- ``bce_dice`` (multi-label data, e.g. ``data=uwmgi``: logits and targets (B, K, H, W), one
  channel per foreground class, classes may overlap): ``CombinedLoss`` of smp's DiceLoss in
  multilabel mode (soft Dice on sigmoid probabilities per class) and torch's
  BCEWithLogitsLoss, each weight 1.

Background: ``include_background: false`` maps to smp's ``classes=[1..C-1]`` (dice, tversky,
lovasz); for ce and focal a class weight of 0 leaves it out. ``ignore_index`` is unset, as the
masks have no void label: smp's Dice and Tversky would zero such pixels in prediction and
target, smp's focal and Lovasz and torch's CE drop them; unset, a void label makes Dice fail in
``one_hot`` but counts as a negative of every class in focal.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from segmentation_models_pytorch.losses.lovasz import _lovasz_softmax
from torch import nn


def with_class_options(
    loss: Callable[..., nn.Module],
    num_classes: int,
    include_background: bool = True,
    class_weights: Sequence[float] | None = None,
) -> nn.Module:
    """Builds ``loss`` (a ``_partial_`` from YAML) with ``include_background``/``class_weights``.

    Libraries spell these differently (smp: ``classes=[...]`` and ``class_weights=[...]``;
    torch: ``weight=tensor``), so every loss config says them the same way and this maps
    them onto whichever arguments ``loss`` takes. ``include_background: false`` keeps classes
    1..C-1 (class 0 is the background); weights need one value per class, background
    included, even when it is left out.
    """
    parameters = inspect.signature(loss).parameters
    name = getattr(loss, "func", loss).__name__
    options = {}
    if not include_background:
        if "classes" not in parameters:
            raise ValueError(
                f"include_background: false, but {name} has no choice of classes; "
                "give the background a class weight of 0 instead"
            )
        options["classes"] = list(range(1, num_classes))
    if class_weights is not None:
        weights = _checked_class_weights(class_weights, num_classes)
        if "class_weights" in parameters:
            options["class_weights"] = weights
        elif "weight" in parameters:
            options["weight"] = torch.tensor(weights)
        else:
            raise ValueError(f"class_weights given, but {name} takes no class weights")
    return loss(**options)


def _checked_class_weights(class_weights: Sequence[float], num_classes: int) -> list[float]:
    if len(class_weights) != num_classes:
        raise ValueError(
            f"class_weights has {len(class_weights)} values {list(class_weights)}, expected one "
            f"per class: {num_classes} (data.num_classes), background first"
        )
    return _checked_weights(class_weights, "class_weights")


def _checked_weights(weights: Sequence[float], key: str) -> list[float]:
    weights = [float(weight) for weight in weights]
    if not all(math.isfinite(weight) and weight >= 0 for weight in weights) or sum(weights) == 0:
        raise ValueError(f"{key} must be finite, >= 0 and not all 0, got {weights}")
    return weights


class LovaszSoftmaxLoss(nn.Module):
    """Multiclass Lovasz-Softmax (Berman et al. 2018) over a chosen set of classes.

    The mean, over the chosen classes present in the batch, of the Lovasz extension of
    ``1 - IoU`` applied to softmax probabilities: a smooth surrogate that optimises IoU
    directly. smp's ``LovaszLoss(mode="multiclass")`` computes exactly this over all classes
    but exposes no choice of classes, so this calls its core with one (the background left
    out). No class weights: smp averages the per-class terms inside that core.
    """

    def __init__(self, classes: Sequence[int] | None = None, ignore_index: int | None = None):
        super().__init__()
        self.classes = None if classes is None else list(classes)
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32: smp's core dots the errors with float32 Jaccard steps (fails on bf16 under AMP).
        probabilities = logits.float().softmax(dim=1)
        chosen = range(logits.shape[1]) if self.classes is None else self.classes
        in_target = set(torch.unique(target).tolist())
        present = [label for label in chosen if label in in_target]
        if not present:  # nothing to overlap with; keep the graph so backward still works
            return probabilities.sum() * 0.0
        return _lovasz_softmax(probabilities, target, classes=present, ignore=self.ignore_index)


class CombinedLoss(nn.Module):
    """``sum(weights[name] * terms[name](logits, target))``: any weighted sum of losses.

    Region losses (Dice, Tversky, Lovasz) fight the imbalance of small CSP/LV regions; pixel
    losses (cross-entropy, focal) give smooth per-pixel gradients early in training. nnU-Net
    uses Dice + CE with both weights 1. The terms come from YAML as nested ``_target_``s.
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        if set(terms) != set(weights):
            raise ValueError(
                f"CombinedLoss: weights must name exactly the terms {sorted(terms)}, "
                f"got weights for {sorted(weights)}"
            )
        names = list(terms)
        checked = _checked_weights([weights[name] for name in names], f"weights of {names}")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = dict(zip(names, checked, strict=True))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * term(logits, target) for name, term in self.terms.items())
