"""Segmentation networks: pure nn.Modules mapping (B, C_in, H, W) images to (B, K, H, W) logits."""

from src.models.factory import build_smp_model
from src.models.unet import UNet

__all__ = ["UNet", "build_smp_model"]
