from pathlib import Path

import huggingface_hub
import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from src.models import AttentionGate, AttentionUNet, PadToMultiple, SegNet, UNet, build_smp_model
from src.models.segnet import MaxUnpool2x2
from src.models.speed import split_speed_options

CONF_DIR = Path(__file__).parents[2] / "conf"
MODEL_CONFIGS = sorted(path.stem for path in (CONF_DIR / "model").glob("*.yaml"))
SCRATCH_NETS = [UNet, AttentionUNet, SegNet]
ODD_SIZE = (61, 75)

# Parameters of every config as shipped (1 input channel, 4 classes), counted once and pinned
# so that an accidental change to a network shows up here. smp models: resnet34 encoder.
EXPECTED_PARAMETERS = {
    "attention_unet": 32_082_120,
    "segnet": 29_436_228,
    "smp_deeplabv3plus": 22_431_956,
    "smp_fpn": 23_149_508,
    "smp_manet": 31_777_796,
    "smp_segformer": 21_871_044,
    "smp_unet": 24_430_532,
    "smp_unetplusplus": 26_072_772,
    "unet": 31_036_676,
    "unet_small": 1_942_340,
}


def _compose_model(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # Through the training config, so ${data.in_channels} / ${data.num_classes} resolve.
        config = compose(
            "train", overrides=[f"model={name}", "paths.output_dir=unused", *overrides]
        )
        # Without the speed options (src.models.speed), as src.train instantiates it.
        return OmegaConf.create(
            split_speed_options(OmegaConf.to_container(config.model, resolve=True))[0]
        )


def _small_overrides(name: str) -> list[str]:
    """The config at a width that runs in a fraction of a second."""
    if name.startswith("smp_"):
        return ["model.encoder_name=resnet18"]
    return ["model.base_channels=8"]


def _n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- scratch networks ---------------------------------------------------------------------


@pytest.mark.parametrize("net_class", SCRATCH_NETS)
@pytest.mark.parametrize("size", [ODD_SIZE, (64, 64), (17, 31)])
def test_scratch_nets_return_logits_at_input_size(net_class, size):
    net = net_class(base_channels=8)
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


@pytest.mark.parametrize("net_class", SCRATCH_NETS)
def test_scratch_nets_zero_pad_sides_too_small_to_reflect(net_class):
    net = net_class(in_channels=3, num_classes=2, base_channels=8)
    # 5 -> 16 (or 32) needs more rows above than a 5-row side can mirror.
    assert net(torch.randn(2, 3, 5, 7)).shape == (2, 2, 5, 7)


@pytest.mark.parametrize("net_class", SCRATCH_NETS)
def test_scratch_nets_backpropagate_to_every_parameter(net_class):
    net = net_class(base_channels=8)
    net(torch.randn(2, 1, 32, 32)).logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("net_class", SCRATCH_NETS)
@pytest.mark.parametrize(
    "shape", [(1, 64, 64), (1, 3, 64, 64), (1, 1, 1, 64, 64)], ids=["rank3", "rgb", "rank5"]
)
def test_scratch_nets_reject_wrong_input_shape(net_class, shape):
    with pytest.raises(ValueError, match=rf"{net_class.__name__} expects .*\(B, 1, H, W\)"):
        net_class(base_channels=8)(torch.randn(*shape))


@pytest.mark.parametrize(
    "net_class", [*SCRATCH_NETS, lambda pad_mode: PadToMultiple(nn.Identity(), 32, pad_mode)]
)
def test_nets_reject_unknown_pad_mode(net_class):
    with pytest.raises(ValueError, match="pad_mode"):
        net_class(pad_mode="circular")


def test_pad_to_multiple_runs_the_net_on_a_multiple_and_crops_back_to_the_input():
    seen_shapes = []
    inner = nn.Identity()
    inner.register_forward_hook(lambda module, args, output: seen_shapes.append(output.shape))
    image = torch.randn(2, 3, *ODD_SIZE)
    # Identity on the padded batch, cropped back: exactly the input, wherever it was placed.
    assert torch.equal(PadToMultiple(inner, 32)(image), image)
    assert seen_shapes == [(2, 3, 64, 96)]


def test_attention_gate_multiplies_the_skip_by_sigmoid_coefficients():
    gate = AttentionGate(skip_channels=8, gating_channels=16)
    skip, gating = torch.randn(2, 8, 12, 10), torch.randn(2, 16, 6, 5)
    psi = gate.coefficients[1]
    with torch.no_grad():
        gated = gate(skip, gating)
        ratio = gated / skip
        assert gated.shape == skip.shape
        # One coefficient per pixel, shared by all channels, strictly between 0 and 1.
        assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-5)
        assert ratio.min() > 0 and ratio.max() < 1
        psi.bias.fill_(-100.0)
        assert gate(skip, gating).abs().max() < 1e-6  # closed gate: the skip is dropped
        psi.bias.fill_(100.0)
        assert torch.allclose(gate(skip, gating), skip)  # open gate: the skip passes


def test_attention_unet_gates_every_skip_with_the_coarser_decoder_level():
    net = AttentionUNet(base_channels=8)
    gates = [up.skip_gate for up in net.ups]
    assert all(isinstance(gate, AttentionGate) for gate in gates)
    # Deepest first: the skip has half the channels of the gating signal coming up.
    assert [gate.gating_proj.in_channels for gate in gates] == [128, 64, 32, 16]
    assert [gate.skip_proj.in_channels for gate in gates] == [64, 32, 16, 8]
    assert all(up.skip_gate is None for up in UNet(base_channels=8).ups)


def test_segnet_has_vgg16_stages_and_unpools_with_the_pooling_indices():
    net = SegNet(base_channels=8)

    def convs(stages):
        return [sum(isinstance(m, nn.Conv2d) for m in stage) for stage in stages]

    assert convs(net.encoder) == [2, 2, 3, 3, 3]
    assert convs(net.decoder) == [3, 3, 3, 2, 1]  # + the 3x3 classifier head
    pooled, unpooled = [], []
    net.pool.register_forward_hook(lambda module, args, output: pooled.append(output[1]))
    net.unpool.register_forward_hook(lambda module, args, output: unpooled.append(args[1]))
    net(torch.randn(1, 1, 64, 64))
    # Each decoder stage unpools with the indices of the encoder stage it mirrors.
    assert len(pooled) == len(unpooled) == 5 and all(map(torch.equal, unpooled, reversed(pooled)))


@pytest.mark.parametrize("size", [(4, 6), (32, 64)])
def test_segnet_unpooling_matches_torch_max_unpool(size):
    pooled, indices = F.max_pool2d(torch.randn(2, 3, *size), 2, return_indices=True)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)  # torch's own unpooling refuses deterministic mode
    try:
        expected = F.max_unpool2d(pooled, indices, 2)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    assert torch.equal(MaxUnpool2x2()(pooled, indices), expected)


def test_segnet_trains_under_deterministic_algorithms():
    # The default trainer sets deterministic: true; torch's MaxUnpool2d refuses it.
    net = SegNet(base_channels=8)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        net(torch.randn(2, 1, 32, 32)).logsumexp(dim=1).mean().backward()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    assert net.encoder[0][0].weight.grad.abs().sum() > 0


# --- the smp factory ----------------------------------------------------------------------


def test_factory_builds_smp_unet_without_weights():
    net = build_smp_model("Unet", "resnet18")
    assert net(torch.randn(2, 1, *ODD_SIZE)).shape == (2, 4, *ODD_SIZE)


def test_factory_wraps_only_architectures_that_need_a_multiple_of_their_stride():
    # smp's Unet resizes in its decoder and takes any size; FPN needs multiples of 32.
    assert isinstance(build_smp_model("Unet", "resnet18"), smp.Unet)
    wrapped = build_smp_model("FPN", "resnet18", pad_mode="constant")
    assert isinstance(wrapped, PadToMultiple) and isinstance(wrapped.net, smp.FPN)
    assert wrapped.multiple == 32 and wrapped.pad_mode == "constant"


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


def test_factory_lists_the_weights_an_encoder_has():
    with pytest.raises(ValueError, match=r"no pretrained weights 'instagram'.*'imagenet'"):
        build_smp_model("Unet", "resnet18", encoder_weights="instagram")


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache, offline, and any download attempt failing the test."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_download(*args, **kwargs):
        pytest.fail(f"tried to download {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub.file_download, "http_get", no_download)
    return tmp_path


def _put_in_cache(cache: Path, repo_id: str, files: dict[str, bytes], revision: str) -> None:
    """Lay files out as huggingface_hub's cache does (snapshots/<commit>, refs/main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / revision).mkdir(parents=True)
    for name, content in files.items():
        (repo / "snapshots" / revision / name).write_bytes(content)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def _safetensors_bytes(state_dict: dict[str, torch.Tensor], tmp_path: Path) -> bytes:
    path = tmp_path / "weights.safetensors"
    save_file({key: value.contiguous() for key, value in state_dict.items()}, path)
    return path.read_bytes()


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
def test_factory_explains_weights_missing_from_the_cache_without_downloading(hub_cache, encoder):
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache") as error:
        build_smp_model("Unet", encoder, encoder_weights="imagenet")
    message = str(error.value)
    assert repr(encoder) in message and str(hub_cache) in message
    repo = "smp-hub/resnet18.imagenet" if encoder == "resnet18" else "timm/resnet18.a1_in1k"
    assert f"hf download {repo}" in message and "encoder_weights=null" in message


def test_factory_loads_cached_smp_weights_offline(hub_cache, tmp_path):
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    torch.manual_seed(0)
    weights = smp.encoders.get_encoder("resnet18").state_dict()
    files = {"config.json": b"{}", "model.safetensors": _safetensors_bytes(weights, tmp_path)}
    _put_in_cache(hub_cache, settings["repo_id"], files, settings["revision"])
    net = build_smp_model("Unet", "resnet18", in_channels=3, encoder_weights="imagenet")
    assert torch.equal(net.encoder.layer4[1].conv2.weight, weights["layer4.1.conv2.weight"])


def test_factory_loads_cached_timm_weights_offline(hub_cache, tmp_path):
    torch.manual_seed(0)
    weights = timm.create_model("resnet18").state_dict()
    files = {"model.safetensors": _safetensors_bytes(weights, tmp_path)}
    _put_in_cache(hub_cache, "timm/resnet18.a1_in1k", files, "0" * 40)
    net = build_smp_model("Unet", "tu-resnet18", in_channels=3, encoder_weights="imagenet")
    assert torch.equal(net.encoder.model.layer4[1].conv2.weight, weights["layer4.1.conv2.weight"])


# --- the configs ----------------------------------------------------------------------------


def test_every_model_config_has_a_pinned_parameter_count():
    assert sorted(EXPECTED_PARAMETERS) == MODEL_CONFIGS


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_config_instantiates_with_its_pinned_parameter_count(name):
    net = instantiate(_compose_model(name))
    assert _n_parameters(net) == EXPECTED_PARAMETERS[name]


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_config_runs_forward_and_backward_on_an_odd_size(name):
    net = instantiate(_compose_model(name, *_small_overrides(name)))
    # Batch 2, not 1: DeepLabV3+'s image-pooling branch batch-normalises a 1x1 map,
    # which training mode refuses for a single image.
    logits = net(torch.randn(2, 1, *ODD_SIZE))
    assert logits.shape == (2, 4, *ODD_SIZE)
    logits.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_model_configs_take_channels_and_classes_from_the_data_config():
    for name in ("unet", "segnet", "smp_fpn"):
        model = _compose_model(name, "data.in_channels=3", "data.num_classes=2")
        assert (model.in_channels, model.num_classes) == (3, 2)


def test_smp_configs_share_the_encoder_and_differ_in_the_decoder():
    smp_configs = [name for name in MODEL_CONFIGS if name.startswith("smp_")]
    models = [_compose_model(name) for name in smp_configs]
    assert {(m.encoder_name, m.encoder_weights) for m in models} == {("resnet34", None)}
    assert len({m.arch for m in models}) == len(smp_configs) == 6
    assert _compose_model("attention_unet").base_channels == _compose_model("unet").base_channels


def test_smp_config_takes_a_large_encoder_by_override():
    net = instantiate(_compose_model("smp_unet", "model.encoder_name=efficientnet-b7"))
    assert _n_parameters(net) == 67_094_612
