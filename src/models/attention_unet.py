"""Attention UNet (Oktay et al. 2018, "Attention U-Net: Learning Where to Look for the Pancreas").

The scratch UNet with an additive attention gate on every skip connection: the coarser
decoder feature says where to look, and the skip features are multiplied by sigmoid
coefficients in [0, 1] before concatenation. Neither torch nor smp has this gate (smp's
decoder "attention" is scSE channel/spatial squeeze-excitation, not gating by the decoder).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.models.unet import UNet


class AttentionGate(nn.Module):
    """alpha = sigmoid(psi(relu(W_x x + W_g g))), upsampled to x's size; returns alpha * x.

    As in the paper, the skip x is brought to the gating signal's (half) resolution by a
    strided 2x2 convolution and the coefficients are resampled bilinearly back to x's size.
    """

    def __init__(
        self, skip_channels: int, gating_channels: int, inter_channels: int | None = None
    ) -> None:
        super().__init__()
        inter_channels = inter_channels or max(skip_channels // 2, 1)
        self.skip_proj = nn.Conv2d(skip_channels, inter_channels, 2, stride=2, bias=False)
        self.gating_proj = nn.Conv2d(gating_channels, inter_channels, kernel_size=1)
        self.coefficients = nn.Sequential(
            nn.ReLU(inplace=True), nn.Conv2d(inter_channels, 1, kernel_size=1), nn.Sigmoid()
        )

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        alpha = self.coefficients(self.skip_proj(skip) + self.gating_proj(gating))
        alpha = F.interpolate(alpha, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return skip * alpha


class AttentionUNet(UNet):
    """The scratch UNet with an :class:`AttentionGate` on each of its four skips."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        base_channels: int = 64,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__(in_channels, num_classes, base_channels, pad_mode, skip_gate=AttentionGate)
