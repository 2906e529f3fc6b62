"""What a checkpoint carries to rebuild its network without the run folder, and the loader.

``SegmentationModule`` writes ``checkpoint["sonoseg"]`` (``checkpoint_payload``); ``load_model``
reads it back. Format 1: ``{"format", "model", "class_names", "image_size", "in_channels"}``
with ``model`` the resolved model config (a ``_target_`` dict), and optionally ``denoiser``:
the resolved config of a denoising pre-stage (``src.denoise``), rebuilt in front of the
network: a classical filter (the data pipeline applied it in training; here it runs on the
resized image, so eval and predict see what training saw) or a network whose weights are the
checkpoint's ``denoiser.*``. Optional too: ``multilabel`` (true: sigmoid outputs, one per
foreground class; absent: softmax) and ``context`` (2.5D input: ``context_slices``,
``volume_column``, ``slice_column``; absent: one slice), so eval and predict decide and stack
as training did. ``src.train_denoiser`` checkpoints carry
``checkpoint["sonoseg_denoiser"]`` (``denoiser_payload``), read by ``load_denoiser``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import torch
from torch import nn

from src.data.splits import SPLIT_RECORD_KEY
from src.inference.predictor import predict_views
from src.inference.prestage import DenoisedSegmenter, as_prestage
from src.inference.views import View
from src.runs import resolve_run_checkpoint

PAYLOAD_KEY = "sonoseg"
PAYLOAD_FORMAT = 1
PAYLOAD_KEYS = ("format", "model", "class_names", "image_size", "in_channels")
DENOISER_PAYLOAD_KEY = "sonoseg_denoiser"
DENOISER_PAYLOAD_KEYS = ("format", "model", "image_size")
# SegmentationModule keeps the network as ``self.net`` and a learned pre-stage as
# ``self.denoiser``; DenoisingModule its network as ``self.net``.
_NET_PREFIX = "net."
_DENOISER_PREFIX = "denoiser."


def _check_config(config: Mapping, what: str) -> None:
    if "_target_" not in config:
        raise ValueError(f"{what} must be a resolved config with a _target_: {config}")


def checkpoint_payload(
    model_config: Mapping,
    class_names: Sequence[str],
    image_size: Sequence[int],
    in_channels: int,
    denoiser: Mapping | None = None,
    multilabel: bool = False,
    context: Mapping | None = None,
) -> dict:
    """The ``checkpoint["sonoseg"]`` entry: plain Python values only (loads with weights_only).
    ``denoiser``: the resolved config of the pre-stage in front of the network, if any;
    ``multilabel`` and ``context``: see the module docstring (left out when unused, so
    softmax checkpoints are as before)."""
    _check_config(model_config, "model_config")
    if len(image_size) != 2:
        raise ValueError(f"image_size must be [height, width], got {list(image_size)}")
    payload = {
        "format": PAYLOAD_FORMAT,
        "model": dict(model_config),
        "class_names": [str(name) for name in class_names],
        "image_size": [int(v) for v in image_size],
        "in_channels": int(in_channels),
    }
    if denoiser is not None:
        _check_config(denoiser, "the denoiser config")
        payload["denoiser"] = dict(denoiser)
    if multilabel:
        payload["multilabel"] = True
    if context is not None and int(context.get("context_slices", 0)):
        payload["context"] = {
            "context_slices": int(context["context_slices"]),
            "volume_column": str(context["volume_column"]),
            "slice_column": str(context["slice_column"]),
        }
    return payload


def denoiser_payload(model_config: Mapping, image_size: Sequence[int]) -> dict:
    """The ``checkpoint["sonoseg_denoiser"]`` entry of a ``src.train_denoiser`` checkpoint."""
    _check_config(model_config, "the denoiser's model config")
    return {
        "format": PAYLOAD_FORMAT,
        "model": dict(model_config),
        "image_size": [int(v) for v in image_size],
    }


@dataclass(frozen=True)
class RestoredModel:
    """A network rebuilt from a checkpoint file, in eval mode, with what its input needs."""

    net: nn.Module
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    in_channels: int
    checkpoint_path: Path
    multilabel: bool = False
    context: dict | None = None  # 2.5D: context_slices, volume_column, slice_column
    # The split it was trained on and its data's fingerprint (src.data.splits.split_record);
    # None for checkpoints written before they carried it.
    split: dict | None = None

    def view_logits(self, image: np.ndarray, views: Sequence[View]) -> np.ndarray:
        """float32 logits (V, K, H, W) of the views of a uint8 image, at its original size."""
        return predict_views(self.net, image, self.image_size, views).numpy()


def _read_checkpoint(path: Path, map_location, key: str, keys: Sequence[str], writer: str):
    """The checkpoint dict and its ``key`` payload, checked (format and keys)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (expected a .ckpt file)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # torch's advice about unsafe loads not repeated
        raise ValueError(f"{path}: not a checkpoint (torch cannot unpickle it safely)") from error
    except Exception as error:  # a truncated or foreign file fails in many ways
        raise ValueError(
            f"{path}: not a checkpoint (torch.load failed: {type(error).__name__})"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    payload = checkpoint.get(key)
    if not isinstance(payload, dict):
        raise ValueError(
            f"{path} has no '{key}' entry: it was not written by {writer} or predates "
            "checkpoints that carry their model config; re-train to get one (expected "
            f"checkpoint['{key}'] with keys {', '.join(keys)})"
        )
    missing = [name for name in keys if name not in payload]
    if missing or payload["format"] != PAYLOAD_FORMAT:
        raise ValueError(
            f"{path}: checkpoint['{key}'] must be format {PAYLOAD_FORMAT} with keys "
            f"{', '.join(keys)}; got format {payload.get('format')!r}, missing {missing}"
        )
    return checkpoint, payload


def _build(config: Mapping, state_dict: Mapping, prefix: str, source: object):
    """``config`` instantiated, with the ``prefix`` weights of ``state_dict`` if it is a
    network (a classical filter has none)."""
    try:
        built = hydra.utils.instantiate(config)
    except Exception as error:
        raise ValueError(f"{source}: cannot build {config}: {error}") from error
    if isinstance(built, nn.Module):
        weights = {
            key.removeprefix(prefix): value
            for key, value in state_dict.items()
            if key.startswith(prefix)
        }
        try:
            built.load_state_dict(weights)
        except RuntimeError as error:
            raise ValueError(
                f"{source}: the weights do not match the model config {config}: {error}"
            ) from error
    return built


def restore_network(payload: Mapping, state_dict: Mapping, source: object = "") -> nn.Module:
    """The network of a ``checkpoint_payload`` with the weights of ``state_dict`` (a
    checkpoint's, or a SegmentationModule's own): behind its denoiser when it has one."""
    net = _build(payload["model"], state_dict, _NET_PREFIX, source)
    if payload.get("denoiser") is None:
        return net
    denoiser = _build(payload["denoiser"], state_dict, _DENOISER_PREFIX, source)
    return DenoisedSegmenter(as_prestage(denoiser), net)


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> RestoredModel:
    """Rebuild the network of a sonoseg checkpoint from the checkpoint alone (no run folder)."""
    path = Path(ckpt_path)
    checkpoint, payload = _read_checkpoint(
        path, map_location, PAYLOAD_KEY, PAYLOAD_KEYS, "sonoseg's SegmentationModule"
    )
    net = restore_network(payload, checkpoint["state_dict"], path)
    net.to(map_location).eval()
    return RestoredModel(
        net=net,
        class_names=tuple(payload["class_names"]),
        image_size=(int(payload["image_size"][0]), int(payload["image_size"][1])),
        in_channels=int(payload["in_channels"]),
        checkpoint_path=path,
        multilabel=bool(payload.get("multilabel", False)),
        context=payload.get("context"),
        split=checkpoint.get(SPLIT_RECORD_KEY),
    )


def load_denoiser(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """The network of a ``src.train_denoiser`` checkpoint (a ``.ckpt`` file or its run
    folder) and its resolved model config, from the checkpoint alone."""
    path = resolve_run_checkpoint(ckpt_path)
    checkpoint, payload = _read_checkpoint(
        path, map_location, DENOISER_PAYLOAD_KEY, DENOISER_PAYLOAD_KEYS, "src.train_denoiser"
    )
    net = _build(payload["model"], checkpoint["state_dict"], _NET_PREFIX, path)
    return net.to(map_location), dict(payload["model"])


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
        mine = (first.class_names, first.image_size, first.in_channels, first.multilabel)
        theirs = (other.class_names, other.image_size, other.in_channels, other.multilabel)
        if theirs != mine:
            raise ValueError(
                f"{other.checkpoint_path} (classes, input size, channels {theirs}) cannot be "
                f"ensembled with {first.checkpoint_path} ({mine})"
            )
    if len(models) == 1:
        return first
    if first.multilabel:
        raise ValueError("ensembles average softmax probabilities: multi-label is not supported")
    return RestoredModel(
        net=Ensemble([m.net for m in models]).eval(),
        class_names=first.class_names,
        image_size=first.image_size,
        in_channels=first.in_channels,
        checkpoint_path=first.checkpoint_path,
    )
