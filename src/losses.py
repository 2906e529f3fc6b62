"""Segmentation losses: ``loss(logits (B, C, H, W), target (B, H, W) long) -> scalar``.

The losses themselves are smp's (DiceLoss, FocalLoss, TverskyLoss, Lovasz-Softmax) and torch's
(CrossEntropyLoss), configured in ``conf/loss``. Written here is only what no library offers:
one spelling of the class options every config shares (``with_class_options``), the class
choice smp's LovaszLoss does not expose (``LovaszSoftmaxLoss``) and weighted sums of losses
(``CombinedLoss``).
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
    weights = [float(weight) for weight in class_weights]
    if len(weights) != num_classes:
        raise ValueError(
            f"class_weights has {len(weights)} values {weights}, expected one per class: "
            f"{num_classes} (data.num_classes), background first"
        )
    return _checked_weights(weights, "class_weights")


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
