from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from src.models import UNet, build_smp_model

CONF_DIR = Path(__file__).parents[1] / "conf"
MODEL_CONFIGS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))


def _compose_model(name: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # Through the training config, so ${data.in_channels} / ${data.num_classes} resolve.
        return compose("train", overrides=[f"model={name}", "paths.output_dir=unused"]).model


@pytest.mark.parametrize("size", [(63, 65), (100, 37), (64, 64), (17, 31)])
def test_unet_returns_logits_at_input_size(size):
    net = UNet(base_channels=8)
    assert net(torch.randn(2, 1, *size)).shape == (2, 4, *size)


def test_unet_crops_back_exactly_the_padding_it_added():
    torch.manual_seed(0)
    net = UNet(base_channels=8).eval()
    image = torch.randn(1, 1, 63, 65)
    # 63 -> 64: pad 0 top, 1 bottom; 65 -> 80: pad 7 left, 8 right.
    padded = F.pad(image, (7, 8, 0, 1), mode="reflect")
    with torch.no_grad():
        expected = net(padded)[..., 0:63, 7:72]
        assert torch.allclose(net(image), expected, atol=1e-6)


def test_unet_zero_pads_sides_too_small_to_reflect():
    net = UNet(in_channels=3, num_classes=2, base_channels=8)
    # 5 -> 16 needs 6 rows above: more than a 5-row side can mirror.
    assert net(torch.randn(2, 3, 5, 7)).shape == (2, 2, 5, 7)


def test_unet_backpropagates_to_the_first_layer():
    net = UNet(base_channels=8)
    net(torch.randn(2, 1, 32, 32)).sum().backward()
    assert net.stem[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "shape", [(1, 64, 64), (1, 3, 64, 64), (1, 1, 1, 64, 64)], ids=["rank3", "rgb", "rank5"]
)
def test_unet_rejects_wrong_input_shape(shape):
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        UNet(base_channels=8)(torch.randn(*shape))


def test_unet_rejects_unknown_pad_mode():
    with pytest.raises(ValueError, match="pad_mode"):
        UNet(pad_mode="circular")


def test_factory_builds_smp_unet_without_weights():
    net = build_smp_model("Unet", "resnet18")
    assert net(torch.randn(2, 1, 64, 64)).shape == (2, 4, 64, 64)


@pytest.mark.parametrize(
    ("arch", "encoder", "listed"),
    [("NoSuchNet", "resnet18", "deeplabv3plus"), ("Unet", "resnet999", "resnet18")],
)
def test_factory_lists_choices_for_unknown_names(arch, encoder, listed):
    with pytest.raises(ValueError, match=listed):
        build_smp_model(arch, encoder)


def test_factory_rejects_unknown_timm_encoder():
    with pytest.raises(ValueError, match="no_such_model"):
        build_smp_model("Unet", "tu-no_such_model")


def test_factory_explains_missing_imagenet_weights_offline(monkeypatch, tmp_path):
    # Offline and an empty cache: huggingface_hub must fail without any request.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="could not find or download") as error:
        build_smp_model("Unet", "resnet18", encoder_weights="imagenet")
    assert "'imagenet'" in str(error.value) and "'resnet18'" in str(error.value)


def test_model_configs_compose_through_defaults():
    small = _compose_model("unet_small")
    assert small.base_channels == 16
    assert small._target_ == "src.models.unet.UNet" and small.num_classes == 4
    deeplab = _compose_model("smp_deeplabv3plus")
    assert deeplab.arch == "DeepLabV3Plus" and deeplab.encoder_name == "resnet18"
    assert deeplab.encoder_weights is None


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_config_runs_forward_and_backward(name):
    net = instantiate(_compose_model(name))
    # Batch 2, not 1: DeepLabV3+'s image-pooling branch batch-normalises a 1x1 map,
    # which training mode refuses for a single image.
    logits = net(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 4, 64, 64)
    logits.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
