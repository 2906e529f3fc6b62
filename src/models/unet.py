"""Classic UNet (Ronneberger et al. 2015) written from scratch, with batch norm and padding.

Written by hand because smp's Unet always has a pretrained-style encoder; this is the
plain baseline the literature on this dataset compares against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Four 2x poolings: the spatial size must be divisible by 2**4 at the bottleneck.
_DEPTH = 4
_SIZE_MULTIPLE = 2**_DEPTH


class DoubleConv(nn.Sequential):
    """(conv3x3 -> BN -> ReLU) x 2; the conv has no bias because BN adds one."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip, DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
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
    ) -> None:
        super().__init__()
        if pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
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
            Up(widths[level + 1], widths[level]) for level in reversed(range(_DEPTH))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        x, (top, left) = self._pad_to_multiple(x)

        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        logits = self.head(x)
        return logits[..., top : top + height, left : left + width]

    def _pad_to_multiple(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pad H and W symmetrically up to a multiple of 16; return the (top, left) offsets."""
        height, width = x.shape[-2:]
        pad_h = -height % _SIZE_MULTIPLE
        pad_w = -width % _SIZE_MULTIPLE
        if pad_h == 0 and pad_w == 0:
            return x, (0, 0)
        top, left = pad_h // 2, pad_w // 2
        padding = (left, pad_w - left, top, pad_h - top)
        # Reflect padding needs each pad smaller than the side it mirrors.
        can_reflect = max(padding[:2]) < width and max(padding[2:]) < height
        mode = self.pad_mode if can_reflect else "constant"
        return F.pad(x, padding, mode=mode), (top, left)
