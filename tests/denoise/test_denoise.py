"""The denoising pieces on their own: DiConvAE, the losses on hand-built cases, PSNR/SSIM, the
classical filters on a phantom with its speckle-free twin, the pair sources, the filtered cache
and the eval-time filter layer."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import hydra
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from support import write_random_vgg16
from torch import nn

from src.data.cache import build_cache, cache_dir_for, open_cache, resize_image
from src.denoise.classical import SRAD, Bilateral, Median, NonLocalMeans
from src.denoise.diconvae import DiConvAE
from src.denoise.losses import VGG16_FILE, perceptual_loss
from src.denoise.metrics import DenoisingQuality, image_quality
from src.denoise.pairs import FolderPairs, PhantomPairs, SpeckledDataset, add_speckle
from src.inference.prestage import FilterLayer
from src.synthetic.phantom import render_scan

ROOT = Path(__file__).resolve().parents[2]
LOSSES = sorted(p.stem for p in (ROOT / "conf" / "denoiser" / "loss").glob("*.yaml"))
FILTERS = {
    "median": Median(),
    "bilateral": Bilateral(),
    "nlm": NonLocalMeans(),
    "srad": SRAD(),
}


def constant(value: float, shape=(2, 1, 64, 64)) -> torch.Tensor:
    return torch.full(shape, value)


def smooth_images(seed: int = 0, shape=(2, 1, 64, 64)) -> torch.Tensor:
    """Images with structure at several scales (MS-SSIM and features need some)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(shape[0], 1, 8, 8, generator=generator)
    return nn.functional.interpolate(coarse, size=shape[-2:], mode="bicubic").clamp(0, 1)


@pytest.fixture(scope="module")
def fake_vgg16(tmp_path_factory) -> Path:
    return write_random_vgg16(tmp_path_factory.mktemp("vgg"))


def loss_from_config(name: str, *overrides: str) -> nn.Module:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train_denoiser", [f"denoiser/loss={name}", *overrides])
    return hydra.utils.instantiate(cfg.denoiser.loss)


def loss_overrides(name: str, fake_vgg16: Path, segmentation_ckpt: Path) -> list[str]:
    if "perceptual" in name and name != "task_perceptual":
        key = "denoiser.loss" if name == "perceptual" else "denoiser.loss.terms.perceptual"
        return [f"{key}.weights_path={fake_vgg16}"]
    if name == "task_perceptual":
        return [f"denoiser.loss.terms.task.ckpt_path={segmentation_ckpt}"]
    return []


@pytest.fixture(scope="module")
def segmentation_ckpt(tiny_trained_run) -> Path:
    return tiny_trained_run / "checkpoints" / "epoch_000.ckpt"


# --- DiConvAE -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 64), (33, 50), (17, 96)])
def test_diconvae_keeps_the_image_size_and_maps_into_0_1(size):
    net = DiConvAE(channels=(4, 4, 8, 8)).eval()
    out = net(torch.rand(3, 1, *size))
    assert out.shape == (3, 1, *size)
    assert out.min() >= 0 and out.max() <= 1
    # Four dilated convolutions in the encoder, four (transposed) in the mirrored decoder.
    encoder = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)]
    decoder = [m for m in net.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.dilation[0] for m in encoder] == [1, 2, 4, 8]
    assert [m.dilation[0] for m in decoder] == [8, 4, 2, 1]
    assert isinstance(net.decoder[-1], nn.Sigmoid)


def test_diconvae_rejects_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="same length"):
        DiConvAE(channels=(4, 4), dilations=(1, 2, 4))
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, H, W\)"):
        DiConvAE(channels=(4,), dilations=(1,))(torch.rand(1, 3, 8, 8))


def test_one_adam_step_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    net = DiConvAE(channels=(8, 8, 8, 8))
    noisy, clean = torch.rand(4, 1, 32, 32), smooth_images(shape=(4, 1, 32, 32))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same dropout mask before and after the step
        return nn.functional.l1_loss(net(noisy), clean)

    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert after < before


# --- losses and metrics ---------------------------------------------------------------------


@pytest.mark.parametrize("name", LOSSES)
def test_each_loss_is_zero_on_identical_images_and_positive_otherwise(
    name, fake_vgg16, segmentation_ckpt
):
    loss = loss_from_config(name, *loss_overrides(name, fake_vgg16, segmentation_ckpt))
    images = smooth_images()
    assert loss(images, images.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(images * 0.5, images).item() > 1e-4


def test_l1_and_l2_on_constant_images():
    assert loss_from_config("l1")(constant(0.25), constant(0.75)).item() == pytest.approx(0.5)
    assert loss_from_config("l2")(constant(0.25), constant(0.75)).item() == pytest.approx(0.25)
    # 0.16 L1 + 0.84 (1 - MS-SSIM): identical -> 0; the weights come from the config.
    combined = loss_from_config("l1_msssim")
    assert combined.weights == {"l1": 0.16, "msssim": 0.84}


def test_msssim_names_the_size_problem():
    loss = loss_from_config("msssim", "denoiser.loss.betas=[0.0448,0.2856,0.3001,0.2363,0.1333]")
    with pytest.raises(ValueError, match=r"\(64, 64\) images with 5 scales"):
        loss(smooth_images(), smooth_images(1))


def test_vgg_weights_are_never_downloaded_and_their_absence_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / VGG16_FILE
    with pytest.raises(FileNotFoundError, match=f"not found at {cached}"):
        perceptual_loss()
    with pytest.raises(FileNotFoundError, match="weights_path"):
        perceptual_loss(weights_path=tmp_path / "nope.pth")
    assert not cached.exists()


def test_perceptual_loss_reads_the_torch_hub_cache(tmp_path, monkeypatch, fake_vgg16):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / VGG16_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(fake_vgg16.read_bytes())
    loss = perceptual_loss(layers=["relu2_2"])
    assert loss(smooth_images(), smooth_images()).item() == 0.0
    with pytest.raises(ValueError, match="lacks"):  # the file stops at relu2_2
        perceptual_loss(layers=["relu3_3"])


def test_feature_networks_stay_frozen_and_in_eval_mode(segmentation_ckpt):
    loss = loss_from_config(
        "task_perceptual", f"denoiser.loss.terms.task.ckpt_path={segmentation_ckpt}"
    )
    loss.train()
    task = loss.terms["task"]
    assert not task.features.training
    assert not any(p.requires_grad for p in task.parameters())
    output = smooth_images().requires_grad_(True)
    loss(output, smooth_images(1)).backward()
    assert output.grad is not None and output.grad.abs().sum() > 0


def test_task_loss_names_unknown_layers(segmentation_ckpt):
    with pytest.raises(
        InstantiationException, match=r"\['encoder'\] not in the segmentation network UNet"
    ):
        loss_from_config(
            "task_perceptual",
            f"denoiser.loss.terms.task.ckpt_path={segmentation_ckpt}",
            "denoiser.loss.terms.task.layers=[encoder]",
        )


def test_psnr_and_ssim_per_image():
    clean = smooth_images()
    psnr, ssim = image_quality(clean, clean)
    assert torch.isinf(psnr).all() and torch.allclose(ssim, torch.ones(2))
    # A constant offset of 0.1: MSE 0.01 -> PSNR 20 dB.
    psnr, _ = image_quality((clean + 0.1).clamp(max=1.1), clean)
    assert torch.allclose(psnr, torch.full((2,), 20.0), atol=1e-3)
    quality = DenoisingQuality()
    quality.update(clean + 0.1, clean + 0.2, clean)
    values = quality.compute()
    assert values["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert values["psnr_input"] == pytest.approx(20 - 20 * np.log10(2), abs=1e-3)
    assert len(quality.per_image()) == 2


# --- classical filters ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom_pair() -> tuple[np.ndarray, np.ndarray]:
    """A phantom scan at 192 x 132 px and the same scan without speckle."""
    scan = render_scan(
        np.random.default_rng(1),
        192,
        132,
        has_csp=True,
        has_lv=True,
        pixel_size_mm=0.75,
        clean=True,
    )
    return scan.image, scan.clean


def flat_regions(clean: np.ndarray) -> np.ndarray:
    """Pixels of the speckle-free scan that vary little around them (no edges): there,
    whatever varies in the speckled scan is speckle."""
    image = clean.astype(np.float32)
    mean = cv2.blur(image, (7, 7))
    std = np.sqrt(np.maximum(cv2.blur(image * image, (7, 7)) - mean * mean, 0))
    return (std < 2.0) & (clean > 5)


@pytest.mark.parametrize("name", FILTERS)
def test_each_classical_filter_reduces_speckle_and_keeps_the_mean(name, phantom_pair):
    noisy, clean = phantom_pair
    flat, sector = flat_regions(clean), clean > 0
    assert flat.sum() > 1000
    denoised = FILTERS[name](noisy)
    assert denoised.dtype == np.uint8 and denoised.shape == noisy.shape
    speckle_before = np.var(noisy[flat].astype(float) - clean[flat])
    speckle_after = np.var(denoised[flat].astype(float) - clean[flat])
    assert speckle_after < 0.85 * speckle_before
    assert abs(denoised[sector].mean() - noisy[sector].mean()) < 1.5  # grey levels


def test_classical_filters_name_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="median: ksize must be odd"):
        Median(ksize=4)
    with pytest.raises(ValueError, match="srad: time_step must be in"):
        SRAD(time_step=2.0)
    with pytest.raises(ValueError, match="nlm: search_window must be odd"):
        NonLocalMeans(search_window=20)
    with pytest.raises(ValueError, match="expects a uint8"):
        Median()(np.zeros((8, 8), np.float32))


def test_the_filter_layer_gives_what_the_cache_gives(phantom_pair):
    """Eval and predict feed a resized image through FilterLayer; training reads the cache,
    filtered after the same resize: the same numbers."""
    noisy, _ = phantom_pair
    resized = resize_image(noisy, (64, 96))
    batch = torch.from_numpy(resized).float().div(255)[None, None]
    out = FilterLayer(SRAD())(batch)
    assert torch.equal(out[0, 0], torch.from_numpy(SRAD()(resized)).float().div(255))


def test_a_filter_gets_its_own_cache(prepared_dir, tmp_path):
    prepared = shutil.copytree(prepared_dir, tmp_path / "prepared")  # caches go inside it
    plain = build_cache(prepared, (32, 48), num_classes=4)
    median = build_cache(prepared, (32, 48), num_classes=4, denoise=Median(ksize=3))
    other = cache_dir_for(prepared, (32, 48), Median(ksize=5))
    assert len({plain, median, other}) == 3 and "-median-" in median.name
    images, masks, _ = open_cache(plain)
    filtered, filtered_masks, _ = open_cache(median)
    assert np.array_equal(filtered[0], Median(ksize=3)(np.array(images[0])))
    assert np.array_equal(filtered_masks, masks)


# --- pair sources ---------------------------------------------------------------------------


def test_phantom_pairs_are_reproducible_and_disjoint():
    source = PhantomPairs((32, 48), {"train": 3, "val": 2, "test": 2}, render_size=(96, 66))
    splits = source.splits()
    again = PhantomPairs((32, 48), {"train": 3, "val": 2, "test": 2}, render_size=(96, 66))
    assert np.array_equal(splits["train"].noisy, again.splits()["train"].noisy)
    item = splits["val"][1]
    assert item["image"].shape == item["target"].shape == (1, 32, 48)
    assert item["id"] == "phantom-val-0001"
    assert not torch.equal(item["image"], item["target"])  # speckle vs none
    assert not np.array_equal(splits["train"].noisy[0], splits["test"].noisy[0])
    with pytest.raises(ValueError, match="sizes must give each of"):
        PhantomPairs((32, 48), {"train": 3, "val": 0, "test": 2})


def test_synthetic_speckle_is_multiplicative_with_mean_one():
    image = np.full((128, 128), 0.4, np.float32)
    noisy = add_speckle(image, np.random.default_rng(0), looks=4, grain_px=(1.0, 3.0))
    assert noisy.mean() == pytest.approx(0.4, rel=0.05)
    assert noisy.std() / noisy.mean() == pytest.approx(0.5, rel=0.25)  # 1 / sqrt(looks)
    base = [{"image": torch.from_numpy(image)[None], "id": "a"}]
    fixed = SpeckledDataset(base, 4, (1.0, 3.0), seed=0, fixed=True)
    assert torch.equal(fixed[0]["image"], fixed[0]["image"])
    assert torch.equal(fixed[0]["target"], base[0]["image"])
    fresh = SpeckledDataset(base, 4, (1.0, 3.0), seed=0, fixed=False)
    assert not torch.equal(fresh[0]["image"], fresh[0]["image"])


def test_folder_pairs_match_names_and_name_what_is_missing(tmp_path):
    noisy_dir, clean_dir = tmp_path / "noisy", tmp_path / "clean"
    noisy_dir.mkdir()
    clean_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(noisy_dir / f"{i}.png"), rng.integers(0, 255, (20, 30), np.uint8))
        cv2.imwrite(str(clean_dir / f"{i}.png"), np.full((20, 30), 9 * i, np.uint8))
    splits = FolderPairs(noisy_dir, clean_dir, (16, 24), 0.2, 0.2).splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "val": 1, "test": 1}
    item = splits["test"][0]
    assert item["image"].shape == (1, 16, 24)
    assert torch.allclose(item["target"], torch.full((1, 16, 24), 9 * int(item["id"][0]) / 255))
    (clean_dir / "3.png").unlink()
    with pytest.raises(ValueError, match=r"no file of the same name in clean_dir .*\['3.png'\]"):
        FolderPairs(noisy_dir, clean_dir, (16, 24)).splits()
    with pytest.raises(FileNotFoundError, match="noisy_dir"):
        FolderPairs(tmp_path / "nope", clean_dir, (16, 24)).splits()
