"""What a checkpoint carries to rebuild its network without the run folder, and the loader.

``SegmentationModule`` writes ``checkpoint["sonoseg"]`` (``checkpoint_payload``); ``load_model``
reads it back. Format 1: ``{"format", "model", "class_names", "image_size", "in_channels"}``
with ``model`` the resolved model config (a ``_target_`` dict).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from torch import nn

PAYLOAD_KEY = "sonoseg"
PAYLOAD_FORMAT = 1
PAYLOAD_KEYS = ("format", "model", "class_names", "image_size", "in_channels")
_NET_PREFIX = "net."  # SegmentationModule keeps the network as ``self.net``


def checkpoint_payload(
    model_config: Mapping,
    class_names: Sequence[str],
    image_size: Sequence[int],
    in_channels: int,
) -> dict:
    """The ``checkpoint["sonoseg"]`` entry: plain Python values only (loads with weights_only)."""
    if "_target_" not in model_config:
        raise ValueError(
            f"model_config must be a resolved model config with a _target_: {model_config}"
        )
    if len(image_size) != 2:
        raise ValueError(f"image_size must be [height, width], got {list(image_size)}")
    return {
        "format": PAYLOAD_FORMAT,
        "model": dict(model_config),
        "class_names": [str(name) for name in class_names],
        "image_size": [int(v) for v in image_size],
        "in_channels": int(in_channels),
    }


@dataclass(frozen=True)
class RestoredModel:
    """A network rebuilt from a checkpoint file, in eval mode, with what its input needs."""

    net: nn.Module
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    in_channels: int
    checkpoint_path: Path


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> RestoredModel:
    """Rebuild the network of a sonoseg checkpoint from the checkpoint alone (no run folder)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (expected a .ckpt file)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"{path} cannot be read as a torch checkpoint with weights_only=True: {error}"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    payload = checkpoint.get(PAYLOAD_KEY)
    if not isinstance(payload, dict):
        raise ValueError(
            f"{path} has no '{PAYLOAD_KEY}' entry: it was not written by sonoseg's "
            "SegmentationModule or predates checkpoints that carry their model config; "
            f"re-train to get one (expected checkpoint['{PAYLOAD_KEY}'] with keys "
            f"{', '.join(PAYLOAD_KEYS)})"
        )
    missing = [key for key in PAYLOAD_KEYS if key not in payload]
    if missing or payload["format"] != PAYLOAD_FORMAT:
        raise ValueError(
            f"{path}: checkpoint['{PAYLOAD_KEY}'] must be format {PAYLOAD_FORMAT} with keys "
            f"{', '.join(PAYLOAD_KEYS)}; got format {payload.get('format')!r}, missing {missing}"
        )
    try:
        net = hydra.utils.instantiate(payload["model"])
    except Exception as error:
        raise ValueError(
            f"{path}: cannot build the network from its model config {payload['model']}: {error}"
        ) from error
    weights = {
        key.removeprefix(_NET_PREFIX): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(_NET_PREFIX)
    }
    try:
        net.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: the weights do not match the model config {payload['model']}: {error}"
        ) from error
    net.to(map_location).eval()
    return RestoredModel(
        net=net,
        class_names=tuple(payload["class_names"]),
        image_size=(int(payload["image_size"][0]), int(payload["image_size"][1])),
        in_channels=int(payload["in_channels"]),
        checkpoint_path=path,
    )


class Ensemble(nn.Module):
    """Several networks as one: the log of their mean softmax probabilities (nnU-Net's way of
    ensembling folds; an argmax of it is the ensemble's label map)."""

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([net(image).float().softmax(dim=1) for net in self.nets])
        return probabilities.mean(dim=0).clamp_min(1e-8).log()


def load_ensemble(
    ckpt_paths: Sequence[str | Path], map_location: str | torch.device = "cpu"
) -> RestoredModel:
    """One checkpoint as ``load_model`` does, or several (e.g. the folds of a cross-validation)
    as an ``Ensemble``; they must agree on classes, input size and channels."""
    if not ckpt_paths:
        raise ValueError("no checkpoint given (expected one .ckpt path or a list of them)")
    models = [load_model(path, map_location) for path in ckpt_paths]
    first = models[0]
    for other in models[1:]:
        mine = (first.class_names, first.image_size, first.in_channels)
        theirs = (other.class_names, other.image_size, other.in_channels)
        if theirs != mine:
            raise ValueError(
                f"{other.checkpoint_path} (classes, input size, channels {theirs}) cannot be "
                f"ensembled with {first.checkpoint_path} ({mine})"
            )
    if len(models) == 1:
        return first
    return RestoredModel(
        net=Ensemble([m.net for m in models]).eval(),
        class_names=first.class_names,
        image_size=first.image_size,
        in_channels=first.in_channels,
        checkpoint_path=first.checkpoint_path,
    )
