"""Classic UNet (Ronneberger et al. 2015) written from scratch, with batch norm and padding.

Written by hand because smp's Unet always has a pretrained-style encoder; this is the
plain baseline the literature on this dataset compares against. A ``skip_gate`` hook lets
variants (the attention UNet) filter each skip connection without copying the network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from src.models.blocks import check_image_batch, check_pad_mode, conv_bn_relu, pad_to_multiple

# Four 2x poolings: the spatial size must be divisible by 2**4 at the bottleneck.
_DEPTH = 4
_SIZE_MULTIPLE = 2**_DEPTH

# (skip_channels, gating_channels) -> module(skip, gating) returning the gated skip, where
# gating is the coarser decoder feature (half the skip's resolution) about to be upsampled.
SkipGateFactory = Callable[[int, int], nn.Module]


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            *conv_bn_relu(in_channels, out_channels), *conv_bn_relu(out_channels, out_channels)
        )


class Up(nn.Module):
    """Transposed-conv upsampling, concatenation with the (optionally gated) skip, DoubleConv."""

    def __init__(
        self, in_channels: int, out_channels: int, skip_gate: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.skip_gate = skip_gate
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.skip_gate is not None:
            skip = self.skip_gate(skip, x)
        return self.conv(torch.cat([skip, self.upsample(x)], dim=1))


class UNet(nn.Module):
    """UNet with four down and four up stages; ``forward`` returns logits (B, C, H, W).

    Any H, W is accepted: the input is padded to a multiple of 16 (reflect, or zeros when
    a side is too small to reflect) and the logits are cropped back to the input size.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        base_channels: int = 64,
        pad_mode: str = "reflect",
        skip_gate: SkipGateFactory | None = None,
    ) -> None:
        super().__init__()
        check_pad_mode(pad_mode)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pad_mode = pad_mode

        widths = [base_channels * 2**level for level in range(_DEPTH + 1)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[level], widths[level + 1]))
            for level in range(_DEPTH)
        )
        self.ups = nn.ModuleList(
            Up(
                widths[level + 1],
                widths[level],
                skip_gate(widths[level], widths[level + 1]) if skip_gate else None,
            )
            for level in reversed(range(_DEPTH))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels, type(self).__name__)
        x, (rows, cols) = pad_to_multiple(x, _SIZE_MULTIPLE, self.pad_mode)

        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)[..., rows, cols]
