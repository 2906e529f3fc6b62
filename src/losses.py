"""Segmentation losses: ``loss(logits (B, C, H, W), target (B, H, W) long) -> scalar``.

Single losses are used straight from their libraries through the Hydra group ``conf/loss``
(smp's DiceLoss, Focal, Tversky, Lovasz; torch's CrossEntropyLoss). Only combinations,
which no library offers, are written here.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn


class DiceCELoss(nn.Module):
    """``dice_weight * multiclass soft Dice + ce_weight * cross-entropy``.

    Dice fights class imbalance (small CSP/LV regions) while cross-entropy gives smooth
    per-pixel gradients early in training; nnU-Net uses the same sum with both weights 1.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(
                "DiceCELoss weights must be >= 0 and not both 0, "
                f"got dice_weight={dice_weight}, ce_weight={ce_weight}"
            )
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.dice = DiceLoss(mode="multiclass", from_logits=True)
        self.cross_entropy = nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * self.cross_entropy(
            logits, target
        )
