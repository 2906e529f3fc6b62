"""Pieces shared by the scratch networks and the smp wrapper: conv blocks, input checks, padding.

Padding to a multiple and cropping back is written here because neither torch nor smp offers
it (smp only raises on sizes that are not multiples of the encoder's stride); every network in
the zoo uses this one helper, so all of them accept any H, W the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PAD_MODES = ("reflect", "constant")


def conv_bn_relu(in_channels: int, out_channels: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """3x3 conv (no bias: the batch norm adds one), batch norm, ReLU: layers to splice in."""
    return (
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def check_pad_mode(pad_mode: str) -> None:
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")


def check_image_batch(x: torch.Tensor, in_channels: int, network: str) -> None:
    """Fail early with the expected shape rather than deep inside a convolution."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{network} expects input of shape (B, {in_channels}, H, W), got {tuple(x.shape)}"
        )


def pad_to_multiple(
    x: torch.Tensor, multiple: int, pad_mode: str = "reflect"
) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Pad H and W symmetrically up to a multiple; return it and the input's (rows, cols).

    ``output[..., rows, cols]`` crops a network's output back to the input's size. Reflect
    padding needs each pad smaller than the side it mirrors; sides too small get zeros.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    top, left = pad_h // 2, pad_w // 2
    region = (slice(top, top + height), slice(left, left + width))
    if pad_h == 0 and pad_w == 0:
        return x, region
    padding = (left, pad_w - left, top, pad_h - top)
    can_reflect = max(padding[:2]) < width and max(padding[2:]) < height
    mode = pad_mode if can_reflect else "constant"
    return F.pad(x, padding, mode=mode), region


class PadToMultiple(nn.Module):
    """Run ``net`` on the input padded to a multiple of ``multiple`` and crop its output back.

    For networks (most smp architectures) that only take sizes divisible by their stride.
    """

    def __init__(self, net: nn.Module, multiple: int, pad_mode: str = "reflect") -> None:
        super().__init__()
        check_pad_mode(pad_mode)
        self.net = net
        self.multiple = multiple
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, (rows, cols) = pad_to_multiple(x, self.multiple, self.pad_mode)
        return self.net(padded)[..., rows, cols]
