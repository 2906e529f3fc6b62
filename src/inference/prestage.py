"""A denoiser in front of a segmenter, as one network for evaluation and prediction.

``src.train`` runs a learned denoiser inside ``SegmentationModule`` and a classical filter in
the data pipeline (on the cached arrays). ``src.eval`` and ``src.predict`` feed the network a
resized original image instead, so the checkpoint's network is rebuilt as
``DenoisedSegmenter(as_prestage(denoiser), segmenter)`` (``src.inference.checkpoint``): a
classical filter becomes a ``FilterLayer`` that applies it exactly as the cache did.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class FilterLayer(nn.Module):
    """A classical filter (uint8 (H, W) -> uint8 (H, W)) on a float batch (B, 1, H, W) in
    [0, 1]: each image goes back to the uint8 it was made from (``round(x * 255)`` is exact
    for the batches' ``uint8 / 255``), through the filter, and back to [0, 1]: the same
    numbers as the filtered array cache gives in training. No weights; runs on the CPU."""

    def __init__(self, image_filter: Callable[[np.ndarray], np.ndarray]) -> None:
        super().__init__()
        self.image_filter = image_filter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"FilterLayer expects (B, 1, H, W) grey images, got {tuple(x.shape)}")
        images = x[:, 0].detach().mul(255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        filtered = np.stack([self.image_filter(image) for image in images])
        return torch.from_numpy(filtered).to(x.device, x.dtype).div(255).unsqueeze(1)

    def extra_repr(self) -> str:
        return repr(self.image_filter)


class DenoisedSegmenter(nn.Module):
    """``segmenter(denoiser(x))``: logits of the denoised image."""

    def __init__(self, denoiser: nn.Module, segmenter: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.segmenter = segmenter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter(self.denoiser(x))


def as_prestage(denoiser: nn.Module | Callable[[np.ndarray], np.ndarray]) -> nn.Module:
    """A network as it is; a classical filter wrapped in a ``FilterLayer``."""
    return denoiser if isinstance(denoiser, nn.Module) else FilterLayer(denoiser)
