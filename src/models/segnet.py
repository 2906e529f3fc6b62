"""SegNet (Badrinarayanan et al. 2017): the classic encoder-decoder control, written from scratch.

A VGG-16-style encoder (2, 2, 3, 3, 3 convs per stage, batch norm) whose max-pooling indices
are reused by the decoder to unpool, instead of UNet's skip concatenation. smp has no SegNet.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from src.models.blocks import check_image_batch, check_pad_mode, conv_bn_relu, pad_to_multiple

# VGG-16's convolutions per stage and widths relative to the first stage.
_CONVS_PER_STAGE = (2, 2, 3, 3, 3)
_WIDTH_FACTORS = (1, 2, 4, 8, 8)
# Five 2x poolings.
_SIZE_MULTIPLE = 2 ** len(_CONVS_PER_STAGE)


def _stage(in_channels: int, out_channels: int, n_convs: int, width: int) -> nn.Sequential:
    """``n_convs`` conv-BN-ReLU layers at ``width``, entered from ``in_channels``, left at
    ``out_channels``."""
    channels = [in_channels, *[width] * (n_convs - 1), out_channels]
    return nn.Sequential(
        *(layer for c_in, c_out in pairwise(channels) for layer in conv_bn_relu(c_in, c_out))
    )


def _repeat_2x2(x: torch.Tensor) -> torch.Tensor:
    """Each pixel repeated into a 2x2 block (a view and a copy: deterministic backward)."""
    *batch, height, width = x.shape
    blocks = x[..., :, None, :, None].expand(*batch, height, 2, width, 2)
    return blocks.reshape(*batch, 2 * height, 2 * width)


class MaxUnpool2x2(nn.Module):
    """What ``nn.MaxUnpool2d(2, stride=2)`` computes, by comparison instead of a scatter.

    torch's MaxUnpool2d refuses ``torch.use_deterministic_algorithms(True)``, which the
    default trainer sets. With non-overlapping 2x2 windows each output pixel has one
    candidate: its window's maximum, kept where the pooling index points at that pixel.
    """

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        height, width = 2 * x.shape[-2], 2 * x.shape[-1]
        positions = torch.arange(height * width, device=x.device).view(height, width)
        return _repeat_2x2(x) * (_repeat_2x2(indices) == positions)


class SegNet(nn.Module):
    """SegNet with batch norm; ``forward`` returns logits (B, num_classes, H, W).

    Width scales with ``base_channels`` (64 is the original). Any H, W is accepted: padded
    to a multiple of 32 and cropped back, as in the scratch UNet.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 4,
        base_channels: int = 64,
        pad_mode: str = "reflect",
    ) -> None:
        super().__init__()
        check_pad_mode(pad_mode)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pad_mode = pad_mode

        widths = [base_channels * factor for factor in _WIDTH_FACTORS]
        inputs = [in_channels, *widths[:-1]]
        self.encoder = nn.ModuleList(
            _stage(c_in, width, n_convs, width)
            for c_in, width, n_convs in zip(inputs, widths, _CONVS_PER_STAGE, strict=True)
        )
        # The mirror image: each decoder stage leaves at the width of the stage above it; the
        # first stage's last conv is the classifier (``head``, 3x3 as in the original).
        self.decoder = nn.ModuleList(
            _stage(widths[level], widths[level - 1], _CONVS_PER_STAGE[level], widths[level])
            if level > 0
            else _stage(widths[0], widths[0], _CONVS_PER_STAGE[0] - 1, widths[0])
            for level in reversed(range(len(widths)))
        )
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)
        self.unpool = MaxUnpool2x2()
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels, type(self).__name__)
        x, (rows, cols) = pad_to_multiple(x, _SIZE_MULTIPLE, self.pad_mode)

        pool_indices = []
        for stage in self.encoder:
            x, indices = self.pool(stage(x))
            pool_indices.append(indices)
        for stage in self.decoder:
            x = stage(self.unpool(x, pool_indices.pop()))
        return self.head(x)[..., rows, cols]
