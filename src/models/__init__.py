"""Segmentation networks: pure nn.Modules mapping (B, C_in, H, W) images to (B, K, H, W) logits."""

from src.models.attention_unet import AttentionGate, AttentionUNet
from src.models.blocks import PadToMultiple
from src.models.factory import build_smp_model
from src.models.segnet import SegNet
from src.models.unet import UNet

__all__ = ["AttentionGate", "AttentionUNet", "PadToMultiple", "SegNet", "UNet", "build_smp_model"]
