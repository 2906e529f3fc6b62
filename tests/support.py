"""Helpers shared by test modules in different folders (tests/ is on sys.path through its
conftest.py, so ``from support import ...`` works from any of them)."""

from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg16


def write_random_vgg16(folder: Path) -> Path:
    """A torchvision-format vgg16 state dict up to relu2_2 with random weights: the loss
    never downloads, so the tests bring their own file."""
    with torch.device("meta"):
        features = vgg16(weights=None).features[:9]
    features = features.to_empty(device="cpu")
    for layer in features:
        if isinstance(layer, nn.Conv2d):
            layer.reset_parameters()
    path = folder / "vgg16-random.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path
