"""PSNR and SSIM of denoised images against their clean targets (torchmetrics), per image.

Both are computed per image (data range 1, images in [0, 1]) and averaged over images, the
usual way to report them; the same two numbers for the noisy *input* say what the denoiser
added. States are the per-image tables, concatenated across processes under DDP.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)
from torchmetrics.utilities import dim_zero_cat

QUALITY_NAMES = ("psnr", "ssim", "psnr_input", "ssim_input")


def image_quality(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM, each (B,), of (B, C, H, W) images in [0, 1]."""
    if output.shape != target.shape or output.ndim != 4:
        raise ValueError(
            f"output {tuple(output.shape)} and target {tuple(target.shape)} must both be "
            "(B, C, H, W)"
        )
    output, target = output.float(), target.float()
    psnr = peak_signal_noise_ratio(output, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(output, target, data_range=1.0, reduction="none")
    return psnr, ssim


class DenoisingQuality(Metric):
    """``psnr``, ``ssim`` of the output and ``psnr_input``, ``ssim_input`` of the noisy
    input, each the mean over images; ``per_image()`` gives the rows."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in QUALITY_NAMES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, output: torch.Tensor, noisy: torch.Tensor, target: torch.Tensor) -> None:
        for prefix, images in (("", output), ("_input", noisy)):
            psnr, ssim = image_quality(images, target)
            getattr(self, f"psnr{prefix}").append(psnr)
            getattr(self, f"ssim{prefix}").append(ssim)

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: values.mean() for name, values in self._tables().items()}

    def per_image(self) -> list[dict[str, float]]:
        with self.sync_context():
            tables = self._tables()
        columns = [values.tolist() for values in tables.values()]
        return [dict(zip(tables, row, strict=True)) for row in zip(*columns, strict=True)]

    def _tables(self) -> dict[str, torch.Tensor]:
        tables = {}
        for name in QUALITY_NAMES:
            state = getattr(self, name)
            empty = isinstance(state, list) and not state
            tables[name] = torch.empty(0, device=self.device) if empty else dim_zero_cat(state)
        return tables
