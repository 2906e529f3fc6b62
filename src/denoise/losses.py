"""Denoising losses: ``loss(output (B, C, H, W), target (B, C, H, W)) -> scalar``, both in
[0, 1]; 0 when the output equals the target.

- ``l1``, ``l2``: torch's ``L1Loss`` / ``MSELoss`` (configs only).
- ``msssim``: ``1 - MS-SSIM`` (torchmetrics), ``MSSSIMLoss``.
- ``l1_perceptual``, ``l2_perceptual``: plus ``FeatureLoss(VGG16Features)``: the mean
  squared difference of ImageNet VGG16 features (Johnson et al. 2016). The weights are read
  from a local file or the torch hub cache, never downloaded (``vgg16_weights_file``).
- ``task_perceptual``: ``FeatureLoss(SegmenterFeatures)``: the same distance on the features
  of a frozen, trained *segmentation* network (``segmenter_features``), the student study's
  proposed fix: a denoiser judged by what the segmenter can still see, not by how clean the
  image looks.
- Sums (``l1_msssim``, ...): ``src.losses.CombinedLoss`` of the terms, as for segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure
from torchvision.models import VGG16_Weights, vgg16

from src.runs import resolve_run_checkpoint

# ImageNet statistics the VGG16 weights were trained with.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Index in torchvision's vgg16().features of the ReLU after each named convolution.
VGG16_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29}
# The file torchvision's VGG16_Weights.IMAGENET1K_V1 would be cached as: vgg16-397923af.pth.
VGG16_FILE = Path(VGG16_Weights.IMAGENET1K_V1.url).name


class MSSSIMLoss(nn.Module):
    """``1 - MS-SSIM(output, target)`` with torchmetrics, data range 1.

    MS-SSIM halves the image once per scale (one per ``betas`` entry), so small images take
    fewer scales: torchmetrics needs ``min(H, W) // max(1, scales - 1) ** 2 > kernel_size - 1``
    (3 scales and kernel 11: 44 px; the standard 5 scales: 161 px). ``normalize="simple"``
    maps every scale's term to [0, 1] before the powers, which keeps the gradient finite
    where a term is near 0 (with "relu" it is not, early in training)."""

    def __init__(
        self,
        kernel_size: int = 11,
        sigma: float = 1.5,
        betas: Sequence[float] = (0.0448, 0.2856, 0.3001),
        normalize: str | None = "simple",
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.sigma = sigma
        self.betas = tuple(float(b) for b in betas)
        self.normalize = normalize

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        try:
            similarity = multiscale_structural_similarity_index_measure(
                output,
                target,
                data_range=1.0,
                kernel_size=self.kernel_size,
                sigma=self.sigma,
                betas=self.betas,
                normalize=self.normalize,
            )
        except ValueError as error:
            raise ValueError(
                f"msssim loss on {tuple(output.shape[-2:])} images with {len(self.betas)} "
                f"scales (betas) and kernel_size {self.kernel_size}: {error}. Smaller images "
                "need fewer betas or a smaller kernel_size"
            ) from error
        return 1.0 - similarity


class FeatureLoss(nn.Module):
    """Mean over layers of the mean squared difference between ``features(output)`` and
    ``features(target)``; ``features`` is a frozen network returning a list of tensors.

    The feature network never learns and stays in eval mode (its batch norms keep their
    statistics) whatever mode the module around it is switched to."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FeatureLoss:
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            wanted = self.features(target)
        got = self.features(output)
        return sum(F.mse_loss(g, w) for g, w in zip(got, wanted, strict=True)) / len(got)


def vgg16_weights_file(weights_path: str | Path | None = None) -> Path:
    """``weights_path``, else torchvision's cached ``<torch hub dir>/checkpoints/vgg16-
    397923af.pth``; FileNotFoundError naming where it looked when absent (never downloads)."""
    path = (
        Path(weights_path)
        if weights_path
        else Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
    )
    if not path.is_file():
        where = "weights_path" if weights_path else "the torch hub cache (weights_path: null)"
        raise FileNotFoundError(
            f"VGG16 weights for the perceptual loss not found at {path} ({where}). They are "
            "never downloaded: give denoiser.loss.terms.perceptual.weights_path=<a torchvision "
            f"vgg16 state dict>, or place torchvision's {VGG16_FILE} in {path.parent} "
            "(TORCH_HOME moves it)"
        )
    return path


class VGG16Features(nn.Module):
    """ImageNet VGG16 features (torchvision's network, weights from ``vgg16_weights_file``)
    after the ReLUs named in ``layers`` (keys of ``VGG16_LAYERS``). Grey input is repeated to
    three channels and normalised with the ImageNet statistics."""

    def __init__(
        self,
        layers: Sequence[str] = ("relu1_2", "relu2_2"),
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(layers) - set(VGG16_LAYERS))
        if not layers or unknown:
            raise ValueError(
                f"perceptual loss layers {list(layers)}: expected some of {list(VGG16_LAYERS)}"
            )
        file = vgg16_weights_file(weights_path)
        self.indices = sorted(VGG16_LAYERS[name] for name in layers)
        # Built on the meta device (no memory, no random init of 138M parameters), then
        # given real storage and every weight from the file.
        with torch.device("meta"):
            body = vgg16(weights=None).features[: self.indices[-1] + 1]
        self.body = body.to_empty(device="cpu").requires_grad_(False)
        state = torch.load(file, map_location="cpu", weights_only=True)
        wanted = {f"features.{key}" for key in self.body.state_dict()}
        missing = sorted(wanted - set(state))
        if missing:
            raise ValueError(
                f"{file} is not a torchvision vgg16 state dict: it lacks {missing[:4]}"
                f"{' ...' if len(missing) > 4 else ''}"
            )
        self.body.load_state_dict(
            {key.removeprefix("features."): state[key] for key in wanted}, strict=True
        )
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        outputs = []
        for index, layer in enumerate(self.body):
            x = layer(x)
            if index in self.indices:
                outputs.append(x)
        return outputs


class SegmenterFeatures(nn.Module):
    """Outputs of the sub-modules ``layers`` (names as in ``net.named_modules()``, e.g.
    ``stem``, ``downs.0`` of the scratch UNet) of a segmentation network.

    Read with forward hooks: torchvision's ``create_feature_extractor`` cannot trace the
    networks here (their padding to a multiple branches on the input's shape)."""

    def __init__(self, net: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        modules = dict(net.named_modules())
        unknown = [name for name in layers if name not in modules or not name]
        if not layers or unknown:
            top = [name for name in modules if name and "." not in name]
            raise ValueError(
                f"task_perceptual layers {list(layers)}: {unknown or 'none given'} not in the "
                f"segmentation network {type(net).__name__} (its modules: {top}, and their "
                "children as <module>.<child>)"
            )
        self.net = net
        self.layers = list(layers)
        self._outputs: dict[str, torch.Tensor] = {}
        for name in self.layers:
            modules[name].register_forward_hook(self._keeper(name))

    def _keeper(self, name: str):
        def keep(module, inputs, output):
            self._outputs[name] = output

        return keep

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._outputs = {}
        self.net(x)
        outputs = [self._outputs[name] for name in self.layers]
        self._outputs = {}
        return outputs


def perceptual_loss(
    layers: Sequence[str] = ("relu1_2", "relu2_2"), weights_path: str | Path | None = None
) -> FeatureLoss:
    """The VGG16 perceptual loss (see ``VGG16Features``)."""
    return FeatureLoss(VGG16Features(layers, weights_path))


def task_perceptual_loss(ckpt_path: str | Path, layers: Sequence[str]) -> FeatureLoss:
    """The task loss on the features of the segmentation network of a sonoseg checkpoint
    (a ``.ckpt`` file, or a run folder: the best checkpoint its summary.json names)."""
    # Imported here: the checkpoint loader builds networks from their configs.
    from src.inference.checkpoint import load_model

    restored = load_model(resolve_run_checkpoint(ckpt_path))
    return FeatureLoss(SegmenterFeatures(restored.net, layers))
