"""One factory for segmentation_models_pytorch networks, with checks and offline-safe weights.

smp already builds every architecture/encoder pair; this wrapper only adds what it lacks:
names validated up front with the choices listed, and a clear error when pretrained
encoder weights are neither cached nor downloadable (the project runs without network).
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import timm
from torch import nn

# smp's own prefix for "any timm model": tu-<timm model name>[.<pretrained tag>].
_TIMM_PREFIX = "tu-"


def build_smp_model(
    arch: str,
    encoder_name: str,
    in_channels: int = 1,
    num_classes: int = 4,
    encoder_weights: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``smp.create_model(arch, ...)``; ``forward`` returns logits (B, num_classes, H, W).

    ``encoder_weights=None`` (the default) initialises randomly and never touches the network.
    Any other value (e.g. "imagenet") loads weights from the Hugging Face cache or downloads
    them; without both, a RuntimeError names the encoder and the weights. H and W must be
    multiples of the encoder's output stride (32 for most encoders).
    """
    _check_names(arch, encoder_name)
    try:
        return smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
            **kwargs,
        )
    except OSError as error:
        # huggingface_hub (smp encoders) and timm (tu- encoders) both raise OSError
        # subclasses when a file is neither cached nor reachable.
        if encoder_weights is None:
            raise
        raise RuntimeError(
            f"could not find or download the pretrained weights ({encoder_weights!r}) of "
            f"encoder {encoder_name!r} (no network and not in the Hugging Face cache). "
            f"Run once with network to cache them, or use encoder_weights=None. Cause: {error}"
        ) from error


def _check_names(arch: str, encoder_name: str) -> None:
    architectures = sorted(smp.MODEL_ARCHITECTURES_MAPPING)
    if arch.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ValueError(f"unknown smp architecture {arch!r}; choose one of {architectures}")
    if encoder_name.startswith(_TIMM_PREFIX):
        timm_name = encoder_name.removeprefix(_TIMM_PREFIX)
        if not timm.is_model(timm_name):
            raise ValueError(
                f"unknown timm encoder {encoder_name!r}: {timm_name!r} is not a timm model "
                "(see timm.list_models())"
            )
    elif encoder_name not in smp.encoders.get_encoder_names():
        raise ValueError(
            f"unknown smp encoder {encoder_name!r}; choose one of "
            f"{sorted(smp.encoders.get_encoder_names())} or '{_TIMM_PREFIX}<timm model name>'"
        )
