"""One factory for segmentation_models_pytorch networks: checked names, any input size, and
pretrained weights taken from disk only.

smp already builds every architecture/encoder pair; this wrapper only adds what it lacks:
names validated up front with the choices listed; the shared pad-and-crop wrapper for
architectures that only take multiples of their stride; and a look in the Hugging Face cache
*before* building, so that missing weights are a clear error at once instead of a download
attempt (which, without network, waits on time-outs and retries before failing).
"""

from __future__ import annotations

from typing import Any

import huggingface_hub
import segmentation_models_pytorch as smp
import timm
from torch import nn

from src.models.blocks import PadToMultiple

# smp's own prefix for "any timm model": tu-<timm model name>[.<pretrained tag>].
_TIMM_PREFIX = "tu-"
# The file names timm's Hugging Face loader tries, in its order.
_TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def build_smp_model(
    arch: str,
    encoder_name: str,
    in_channels: int = 1,
    num_classes: int = 4,
    encoder_weights: str | None = None,
    pad_mode: str = "reflect",
    **kwargs: Any,
) -> nn.Module:
    """Build ``smp.create_model(arch, ...)``; ``forward`` returns logits (B, num_classes, H, W).

    ``encoder_weights=None`` (the default) initialises randomly. Any other value (e.g.
    "imagenet"; for ``tu-`` encoders, any value means timm's pretrained tag) is read from
    the Hugging Face cache and never downloaded: when the files are not there, a
    FileNotFoundError names them and the command that fetches them. Any H, W is accepted:
    architectures that need multiples of the encoder's stride get their input padded
    (``pad_mode``) and their logits cropped back. Other ``kwargs`` go to the architecture.
    """
    _check_names(arch, encoder_name)
    if encoder_weights is not None and encoder_name.startswith(_TIMM_PREFIX):
        # Point timm at the cached file itself: its Hub loader would still ask the network
        # whether a newer revision exists.
        kwargs["pretrained_cfg_overlay"] = {"file": _cached_timm_weights(encoder_name)}
        encoder_weights = True  # smp's spelling of "pretrained" for timm encoders
    elif encoder_weights is not None:
        # smp pins a commit, so with the files cached it loads them without any request.
        _require_cached_smp_weights(encoder_name, encoder_weights)
    net = smp.create_model(
        arch,
        encoder_name=encoder_name,
        encoder_weights=encoder_weights,
        in_channels=in_channels,
        classes=num_classes,
        **kwargs,
    )
    if net.requires_divisible_input_shape:
        return PadToMultiple(net, net.encoder.output_stride, pad_mode)
    return net


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


def _require_cached_smp_weights(encoder_name: str, encoder_weights: str) -> None:
    available = smp.encoders.encoders[encoder_name]["pretrained_settings"]
    if encoder_weights not in available:
        raise ValueError(
            f"encoder {encoder_name!r} has no pretrained weights {encoder_weights!r}; "
            f"choose one of {sorted(available)} or null"
        )
    settings = available[encoder_weights]
    files = ("config.json", "model.safetensors")  # what smp's get_encoder reads
    missing = [
        name
        for name in files
        if _cached_file(settings["repo_id"], name, settings["revision"]) is None
    ]
    if missing:
        raise _weights_not_on_disk(
            f"pretrained weights {encoder_weights!r} of encoder {encoder_name!r}",
            f"hf download {settings['repo_id']} {' '.join(files)} "
            f"--revision {settings['revision']}",
        )


def _cached_timm_weights(encoder_name: str) -> str:
    """The cached weight file of a ``tu-`` encoder's pretrained tag (timm's default if none)."""
    timm_name = encoder_name.removeprefix(_TIMM_PREFIX)
    config = timm.models.get_pretrained_cfg(timm_name)
    if config is None or config.hf_hub_id is None:
        raise ValueError(
            f"timm encoder {encoder_name!r} has no pretrained weights on the Hugging Face Hub; "
            "use encoder_weights=null or a tag from timm.list_pretrained()"
        )
    repo_id, _, revision = config.hf_hub_id.partition("@")
    names = (config.hf_hub_filename,) if config.hf_hub_filename else _TIMM_WEIGHT_FILES
    for name in names:
        path = _cached_file(repo_id, name, revision or None)
        if path is not None:
            return path
    raise _weights_not_on_disk(
        f"pretrained weights of timm encoder {encoder_name!r}", f"hf download {repo_id} {names[0]}"
    )


def _cached_file(repo_id: str, filename: str, revision: str | None) -> str | None:
    path = huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision)
    return path if isinstance(path, str) else None  # None, or a "known not to exist" marker


def _weights_not_on_disk(what: str, fetch_command: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"the {what} are not in the Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) "
        f"and are never downloaded while building a model. Fetch them once on a machine with "
        f"network (`{fetch_command}`, then copy the cache), or set encoder_weights=null (None)."
    )
