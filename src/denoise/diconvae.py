"""DiConvAE: the dilated-convolution autoencoder of the student despeckling study.

Encoder: four 3x3 convolutions with growing dilation (1, 2, 4, 8 by default), each followed
by batch norm, ReLU and dropout; the decoder mirrors it with transposed convolutions of
shrinking dilation back to the input's channels, and a sigmoid maps the output to [0, 1]
(the range of the batches). No pooling: dilation widens the receptive field (61 px with the
defaults, encoder and decoder) while every layer keeps the image size, so any H, W goes
through unpadded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from src.models.blocks import check_image_batch


def _layer(conv: type[nn.Module], c_in: int, c_out: int, dilation: int, k: int) -> nn.Module:
    # padding = dilation * (k - 1) / 2 keeps H, W for Conv2d and ConvTranspose2d alike.
    return conv(c_in, c_out, k, padding=dilation * (k - 1) // 2, dilation=dilation, bias=False)


def _block(conv, c_in: int, c_out: int, dilation: int, k: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        _layer(conv, c_in, c_out, dilation, k),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    )


class DiConvAE(nn.Module):
    """``forward(x (B, C, H, W) in [0, 1]) -> (B, C, H, W) in (0, 1)``.

    ``channels[i]`` is the width after encoder layer i (dilation ``dilations[i]``); the
    decoder runs the same widths and dilations backwards and ends at ``in_channels``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 32, 64, 64),
        dilations: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        channels, dilations = [int(c) for c in channels], [int(d) for d in dilations]
        if not channels or len(channels) != len(dilations):
            raise ValueError(
                f"DiConvAE: channels {channels} and dilations {dilations} must be non-empty "
                "and of the same length (one per encoder layer)"
            )
        if min(channels) < 1 or min(dilations) < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"DiConvAE: channels and dilations must be >= 1 and kernel_size odd; got "
                f"channels {channels}, dilations {dilations}, kernel_size {kernel_size}"
            )
        if not 0 <= dropout < 1:
            raise ValueError(f"DiConvAE: dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        widths = [in_channels, *channels]
        self.encoder = nn.Sequential(
            *(
                _block(nn.Conv2d, widths[i], widths[i + 1], dilations[i], kernel_size, dropout)
                for i in range(len(channels))
            )
        )
        # Mirrored: widths and dilations backwards; the last layer is a plain transposed conv
        # (with a bias, no norm) into the output channels.
        self.decoder = nn.Sequential(
            *(
                _block(
                    nn.ConvTranspose2d, widths[i + 1], widths[i], dilations[i], kernel_size, dropout
                )
                for i in reversed(range(1, len(channels)))
            ),
            nn.ConvTranspose2d(
                widths[1],
                in_channels,
                kernel_size,
                padding=dilations[0] * (kernel_size - 1) // 2,
                dilation=dilations[0],
            ),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels, type(self).__name__)
        return self.decoder(self.encoder(x))
