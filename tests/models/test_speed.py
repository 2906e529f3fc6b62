"""Speed settings: trainer presets (precision, cuDNN, GPU-sized loaders), the SLURM launcher's
composition, channels-last and torch.compile applied without changing what checkpoints hold."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import src  # noqa: F401  (sets PROJECT_ROOT, which the SLURM launcher's folder interpolates)
from src.inference.checkpoint import PAYLOAD_KEY, load_model
from src.models import UNet
from src.models.speed import accelerate, compile_options, split_speed_options
from src.train import train

ROOT = Path(__file__).resolve().parents[2]


def _compose(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=["paths.output_dir=unused", *overrides],
            return_hydra_config=hydra_config,
        )


# --- presets ------------------------------------------------------------------------------


def test_gpu_preset_alone_is_the_fast_setting():
    for experiment in ([], ["+experiment=unet_dice"], ["+experiment=smp_unet_r34_dice_ce"]):
        cfg = _compose("trainer=gpu", *experiment)
        assert cfg.trainer.accelerator == "gpu"
        assert cfg.trainer.precision == "bf16-mixed"
        assert cfg.trainer.benchmark is True and cfg.trainer.deterministic is False
        assert (cfg.data.batch_size, cfg.data.num_workers) == (32, 8)
    # The CPU default and the CPU recipe are untouched; the command line still wins.
    cpu = _compose("+experiment=unet_dice")
    assert (cpu.trainer.precision, cpu.data.batch_size) == ("32-true", 8)
    assert _compose("trainer=gpu", "+experiment=unet_dice_cpu").data.batch_size == 4
    older_gpu = _compose("trainer=gpu", "trainer.precision=16-mixed", "data.batch_size=16")
    assert (older_gpu.trainer.precision, older_gpu.data.batch_size) == ("16-mixed", 16)


def test_ddp_presets_build_on_the_gpu_one():
    ddp = _compose("trainer=ddp")
    assert (ddp.trainer.strategy, ddp.trainer.devices, ddp.trainer.sync_batchnorm) == (
        "ddp",
        2,
        True,
    )
    assert (ddp.trainer.precision, ddp.data.batch_size) == ("bf16-mixed", 32)
    sim = _compose("trainer=ddp_sim")
    assert (sim.trainer.accelerator, sim.trainer.devices) == ("cpu", 2)
    assert sim.trainer.strategy.process_group_backend == "gloo"


def test_slurm_launcher_asks_for_one_task_per_device_on_each_node():
    cfg = _compose(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.partition=gpu",
        hydra_config=True,
    )
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"] == "hydra_plugins.sonoseg.slurm_launcher.SlurmLauncher"
    assert (launcher["tasks_per_node"], launcher["nodes"], launcher["gpus_per_node"]) == (4, 2, 4)
    assert launcher["partition"] == "gpu"
    assert launcher["submitit_folder"].endswith("/.submitit/%j")


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp_sim"])
def test_slurm_launcher_asks_for_no_gpu_with_a_cpu_trainer(trainer):
    cfg = _compose("hydra/launcher=slurm", f"trainer={trainer}", hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["gpus_per_node"] is None
    assert launcher["tasks_per_node"] == cfg.trainer.devices


# --- channels_last and compile --------------------------------------------------------------


def test_speed_options_are_split_from_the_network_config():
    config, options = split_speed_options(
        {"_target_": "x.Net", "base_channels": 8, "channels_last": True, "compile": {"mode": "m"}}
    )
    assert config == {"_target_": "x.Net", "base_channels": 8}
    assert options == {"channels_last": True, "compile": {"mode": "m"}}
    assert split_speed_options({"_target_": "x.Net"})[1] == {
        "channels_last": False,
        "compile": False,
    }
    assert compile_options(False) is None and compile_options(True) == {}
    with pytest.raises(ValueError, match="model.compile"):
        compile_options("yes")


class SmallNet(torch.nn.Sequential):
    """Few operations, so that tracing it for torch.compile takes little time."""

    def __init__(self):
        super().__init__(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 4, 1),
        )


def _pair() -> tuple[SmallNet, SmallNet]:
    torch.manual_seed(0)
    plain, other = SmallNet().eval(), SmallNet().eval()
    other.load_state_dict(plain.state_dict())
    return plain, other


def test_channels_last_and_compile_keep_outputs_and_state_dict_keys():
    plain, fast = _pair()
    accelerate(fast, channels_last=True, compile={"backend": "eager"})
    image = torch.rand(2, 1, 48, 40)
    with torch.no_grad():
        assert torch.allclose(fast(image), plain(image), atol=1e-5)
    assert fast.forward.is_compiled()
    assert list(fast.state_dict()) == list(plain.state_dict())
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(caplog):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler on this machine")

    plain, fast = _pair()
    accelerate(fast, compile={"backend": broken_backend})
    image = torch.rand(1, 1, 32, 32)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = fast(image)
    assert torch.allclose(out, plain(image), atol=1e-6)
    assert not fast.forward.is_compiled()
    assert "torch.compile of SmallNet failed" in caplog.text and "running it eagerly" in caplog.text


def test_bf16_channels_last_compiled_training_on_cpu_saves_a_plain_checkpoint(tiny_run, tmp_path):
    # One step of the trainer=cpu preset (bf16 autocast, channels-last, threads from the free
    # cores), compiled: a finite loss; the checkpoint's config and keys are the plain
    # network's, so src.eval/src.predict load it as any other.
    cfg = _compose(
        *tiny_run,
        "trainer=cpu",
        "model.compile={backend: eager}",
        "trainer.limit_val_batches=1",
        "test=false",
        f"paths.output_dir={tmp_path}",
    )
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.channels_last
    assert cfg.callbacks.cpu_threads.threads == "auto"
    threads = torch.get_num_threads()
    metrics = train(cfg)
    torch.set_num_threads(threads)
    assert math.isfinite(metrics["train/loss_epoch"])
    (ckpt,) = (tmp_path / "checkpoints").glob("epoch_*.ckpt")
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert "channels_last" not in checkpoint[PAYLOAD_KEY]["model"]
    assert "compile" not in checkpoint[PAYLOAD_KEY]["model"]
    assert not [key for key in checkpoint["state_dict"] if "_orig_mod" in key]
    restored = load_model(ckpt).net
    assert isinstance(restored, UNet)
    assert set(restored.state_dict()) == {
        key.removeprefix("net.") for key in checkpoint["state_dict"] if key.startswith("net.")
    }


def test_cpu_fast_settings_train_like_the_plain_ones():
    # hc18_cpu's speed settings (bf16 autocast, as Lightning's bf16-mixed runs on a CPU, and
    # channels-last) against plain fp32 on the same UNet, batch and seed. bf16 keeps 8 bits of
    # mantissa (relative rounding ~0.4% per product, accumulated in fp32), so the first logits
    # agree to 5% of their spread and the loss after 8 AdamW steps to 3% (measured: under 1%);
    # a wrong layout or a dropped autocast would miss by far more.
    torch.manual_seed(0)
    image = torch.rand(4, 1, 64, 96)
    truth = (image[:, 0] > 0.5).long()

    def train_steps(fast: bool) -> tuple[torch.Tensor, list[float]]:
        torch.manual_seed(1)
        net = UNet(in_channels=1, num_classes=2, base_channels=8)
        if fast:
            accelerate(net, channels_last=True)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
        losses, first = [], None
        for _ in range(8):
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
                logits = net(image)
                loss = torch.nn.functional.cross_entropy(logits.float(), truth)
            if first is None:
                first = logits.detach().float()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        return first, losses

    plain_logits, plain_losses = train_steps(fast=False)
    fast_logits, fast_losses = train_steps(fast=True)
    spread = float(plain_logits.max() - plain_logits.min())
    assert float((fast_logits - plain_logits).abs().max()) < 0.05 * spread
    assert fast_losses[-1] == pytest.approx(plain_losses[-1], rel=0.03)
    assert fast_losses[-1] < fast_losses[0]  # it trains
