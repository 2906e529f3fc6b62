"""Training throughput: our Trainer against a plain PyTorch loop, the loader alone, FLOPs.

    python -m src.bench                                     # the full grid (meant for a GPU)
    python -m src.bench --sizes 64 --base-channels 16 --steps 5 --batch-size 8   # CPU-sized
    python -m src.bench --sizes 128x192 --threads 1 2 ...   # height x width; intra-op threads
    python -m src.bench ... [hydra overrides for the loader's data, e.g. data.root=/path]

For every model (``--models``: ``unet`` = the scratch UNet of conf/model/unet.yaml at
``--base-channels``, ``smp_unet`` = smp Unet-resnet34), size, precision (``32-true``,
``bf16-mixed``, ``16-mixed``), channels_last and compile setting, one process measures training
images per second

- through our stack: ``SegmentationModule`` in a Lightning ``Trainer`` (the network built and
  accelerated as ``src.train`` does, the configured loss and optimizer, ``train/loss`` logged);
- through a plain loop on a second copy of the same network: ``zero_grad``, forward under
  ``torch.autocast``, loss, backward, step (``GradScaler`` for 16-mixed);

on the same preloaded batches on the device (so neither waits for data), after ``--warmup``
steps (compilation, cuDNN autotuning), in ``--repeats`` interleaved rounds whose medians are
reported. ``overhead`` = plain / Trainer - 1. The loader is timed
alone (the DataModule's training loader with its augmentation, batches moved to the device, no
model) once per size. FLOPs per training image (forward + backward) come from
``torch.utils.flop_counter`` on the meta device; ``% peak`` divides the achieved FLOP/s by the
device's dense peak for that precision (``PEAK_TFLOPS``; a CPU's is estimated from its cores,
clock and vector width, and marked as an estimate).

Rows are appended to ``--out`` (BENCHMARKS.md) under a heading naming the device, the versions
and the command; earlier rows are never rewritten.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import logging
import multiprocessing
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

import src  # noqa: F401  (sets PROJECT_ROOT for the configs)
from src.lit.segmentation import SegmentationModule
from src.models.speed import accelerate, split_speed_options

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODELS = {"unet": "unet", "smp_unet": "smp_unet"}  # bench name -> conf/model choice
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# Dense (no sparsity) peak TFLOP/s by device-name substring: (fp32, 16-bit tensor cores).
# fp32 is the plain-fp32 figure (32-true runs without TF32 unless a user enables it).
# From NVIDIA's data sheets; SXM parts (PCIe H100: 51 / 756).
PEAK_TFLOPS = {
    "H200": (67.0, 989.0),
    "H100": (67.0, 989.0),
    "A100": (19.5, 312.0),
    "L40S": (91.6, 362.0),
    "A10": (31.2, 125.0),
    "V100": (15.7, 125.0),
    "T4": (8.1, 65.0),
}
HEADER = (
    "| model | size | batch | precision | channels_last | compile | threads | Trainer img/s | "
    "plain img/s | overhead | loader img/s | GFLOP/img | % peak |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


@dataclass(frozen=True)
class Setting:
    model: str
    size: tuple[int, int]  # height, width
    precision: str
    channels_last: bool
    compile: bool
    threads: int  # torch's intra-op threads


def parse_size(text: str) -> tuple[int, int]:
    """``--sizes`` entries: ``256`` (square) or ``128x192`` (height x width)."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) <= 0:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 128x192), got {text!r}")
    return size


def size_label(size: tuple[int, int]) -> str:
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


# --------------------------------------------------------------------------- building


def compose_train_config(overrides: Sequence[str]):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides])


def model_overrides(model: str, base_channels: int) -> list[str]:
    if model not in MODELS:
        raise ValueError(f"--models: unknown model {model!r}; choose from {sorted(MODELS)}")
    if model == "unet":
        return ["model=unet", f"model.base_channels={base_channels}"]
    return ["model=smp_unet", "model.encoder_name=resnet34"]


def build_network(cfg, setting: Setting) -> tuple[torch.nn.Module, dict]:
    """The network as ``src.train`` builds it: config without the speed keys, then
    ``accelerate`` with this setting's channels_last and compile."""
    config, _ = split_speed_options(OmegaConf.to_container(cfg.model, resolve=True))
    net = hydra.utils.instantiate(config)
    return net, config


def device_batches(
    n: int, batch_size: int, size: tuple[int, int], num_classes: int, device: torch.device
) -> list[dict]:
    """``n`` distinct random batches already on the device (images in [0, 1], labels)."""
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.rand(batch_size, 1, *size, generator=generator).to(device),
            "mask": torch.randint(0, num_classes, (batch_size, *size), generator=generator)
            .long()
            .to(device),
            "id": [f"bench{i}-{j}" for j in range(batch_size)],
        }
        for i in range(n)
    ]


class _Batches(Dataset):
    """Preloaded batches served as they are (``batch_size=None``): no data cost at all."""

    def __init__(self, batches: list[dict], steps: int):
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- timing


class _StepTimer(pl.Callback):
    """Wall time from the start of training batch ``warmup`` to the end of the last one."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        synchronize(pl_module.device)
        self.end = time.perf_counter()


def time_trainer(
    cfg, setting: Setting, batches, warmup: int, steps: int, device: torch.device
) -> float:
    """Images per second through SegmentationModule + Trainer (training steps only)."""
    net, config = build_network(cfg, setting)
    accelerate(net, channels_last=setting.channels_last, compile=setting.compile)
    module = SegmentationModule(
        net=net,
        loss=hydra.utils.instantiate(cfg.loss),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=None,
        class_names=[f"class{i}" for i in range(cfg.data.num_classes)],
        scheduler_monitor="val/dice_mean",
        model_config=config,
        image_size=list(setting.size),
        in_channels=1,
    )
    timer = _StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator=device.type if device.type != "cuda" else "gpu",
        devices=1,
        precision=setting.precision,
        max_steps=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        benchmark=device.type == "cuda",
        deterministic=False,
        callbacks=[timer],
    )
    loader = DataLoader(_Batches(batches, warmup + steps), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    images = steps * len(batches[0]["id"])
    return images / (timer.end - timer.start)


def time_plain_loop(
    cfg, setting: Setting, batches, warmup: int, steps: int, device: torch.device
) -> float:
    """Images per second through the naive loop a user writes by hand (same net config)."""
    torch.backends.cudnn.benchmark = device.type == "cuda"
    net, _ = build_network(cfg, setting)
    net = accelerate(
        net.to(device), channels_last=setting.channels_last, compile=setting.compile
    ).train()
    loss_fn = hydra.utils.instantiate(cfg.loss)
    optimizer = hydra.utils.instantiate(cfg.optimizer)(params=net.parameters())
    dtype = AUTOCAST[setting.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)

    def step(batch: dict) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net(batch["image"]), batch["mask"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for i in range(warmup):
        step(batches[i % len(batches)])
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    synchronize(device)
    return steps * len(batches[0]["id"]) / (time.perf_counter() - start)


def _shared_worker(args: tuple, results) -> None:
    cfg, setting, batches, warmup, steps, wait_policy = args
    torch.set_num_threads(setting.threads)
    rate = time_plain_loop(cfg, setting, batches, warmup, steps, torch.device("cpu"))
    results.put(rate)


def time_shared(
    cfg, setting: Setting, batches, warmup: int, steps: int, processes: int, wait_policy: str
) -> list[float]:
    """Images per second of each of ``processes`` plain loops run at once on the CPU (as a
    parallel sweep, or the viewer beside a training, shares it), each with
    ``setting.threads`` intra-op threads and OpenMP's ``wait_policy`` (``OMP_WAIT_POLICY``:
    active threads spin at a barrier, passive ones sleep; ``default``: unset)."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    saved = os.environ.get("OMP_WAIT_POLICY")
    if wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = wait_policy  # read when the child's OpenMP starts
    try:
        workers = [
            context.Process(
                target=_shared_worker,
                args=((cfg, setting, batches, warmup, steps, wait_policy), results),
            )
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        rates = [results.get(timeout=3600) for _ in workers]
        for worker in workers:
            worker.join()
    finally:
        os.environ.pop("OMP_WAIT_POLICY", None)
        if saved is not None:
            os.environ["OMP_WAIT_POLICY"] = saved
    return rates


def time_loader(cfg, steps: int, device: torch.device) -> float:
    """Images per second of the DataModule's training loader alone (augmentation included,
    batches moved to the device, and the GPU data path's gathering and augmentation when it is
    configured), the model replaced by nothing; the first batch (worker
    start-up) is not timed. Epochs repeat until ``steps`` batches are timed."""
    datamodule = hydra.utils.instantiate(cfg.data, splits_out=None)
    datamodule.prepare_data()
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    seen, start = 0, None
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        if datamodule.device_path is not None:  # augmentation=gpu, data.cache_device=cuda
            batch = datamodule.device_path(batch, device, training=True)
        if i == 0:
            synchronize(device)
            start = time.perf_counter()
            continue
        seen += len(batch["image"])
        if i == steps:
            break
    synchronize(device)
    return seen / (time.perf_counter() - start)


def training_flops_per_image(cfg, size: tuple[int, int], device: torch.device) -> float:
    """FLOPs of one training image, forward + backward, counted by torch's FlopCounterMode on
    one image on the device (the meta device cannot run every backward)."""
    config, _ = split_speed_options(OmegaConf.to_container(cfg.model, resolve=True))
    net = hydra.utils.instantiate(config).to(device)
    counter = FlopCounterMode(display=False)
    with counter:
        net(torch.rand(1, 1, *size, device=device)).float().sum().backward()
    return float(counter.get_total_flops())


# --------------------------------------------------------------------------- the device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name}, {os.cpu_count()} cores"


def peak_tflops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(dense peak TFLOP/s, how it was obtained) for this device and precision."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (fp32, half) in PEAK_TFLOPS.items():
            if key in name:
                return (fp32 if precision == "32-true" else half), f"data sheet ({key})"
        return None, f"unknown for {name}: add it to src.bench.PEAK_TFLOPS"
    return cpu_peak_estimate(precision)


def cpu_peak_estimate(precision: str = "32-true") -> tuple[float | None, str]:
    """cores x clock x FLOPs per cycle: 2 FMA units x fp32 vector lanes x 2, an upper bound
    (the listed clock, not turbo). bf16 counts twice that where the CPU has AVX512-BF16 dot
    products; AMX and fp16 are not modelled (fp16 autocast on a CPU: the fp32 rate)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, "unknown (no /proc/cpuinfo)"
    mhz = [float(v) for v in re.findall(r"cpu MHz\s*:\s*([\d.]+)", info)]
    flags = set(re.search(r"flags\s*:(.*)", info).group(1).split()) if "flags" in info else set()
    if not mhz:
        return None, "unknown (no clock in /proc/cpuinfo)"
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * lanes * 2
    if precision == "bf16-mixed" and "avx512_bf16" in flags:
        per_cycle *= 2
    cores = os.cpu_count() or 1
    peak = cores * max(mhz) * 1e6 * per_cycle / 1e12
    return peak, f"estimate: {cores} cores x {max(mhz):.0f} MHz x {per_cycle} FLOP/cycle"


def versions() -> str:
    import segmentation_models_pytorch as smp

    parts = [
        f"torch {torch.__version__}",
        f"lightning {pl.__version__}",
        f"smp {smp.__version__}",
        f"Python {platform.python_version()}",
    ]
    if torch.cuda.is_available():
        parts += [f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}"]
    return ", ".join(parts)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    on_off = {"off": False, "on": True}
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="*",
        default=["unet", "smp_unet"],
        choices=MODELS,
        help="none (a bare --models): time the loader alone",
    )
    parser.add_argument(
        "--sizes", nargs="+", type=parse_size, default=[(256, 256), (512, 512)], help="N or HxW"
    )
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", nargs="+", default=["off", "on"], choices=on_off)
    parser.add_argument("--compile", nargs="+", default=["off", "on"], choices=on_off)
    parser.add_argument("--base-channels", type=int, default=64, help="the scratch UNet's width")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved Trainer / plain-loop rounds per setting; the medians are reported",
    )
    parser.add_argument(
        "--threads",
        nargs="+",
        type=int,
        default=[torch.get_num_threads()],
        help="torch intra-op thread counts to compare (default: torch's own choice)",
    )
    parser.add_argument(
        "--share",
        type=int,
        default=0,
        help="time N plain loops running at once on the CPU against one alone, instead of "
        "the grid (--threads, --wait-policies: the settings to compare)",
    )
    parser.add_argument(
        "--wait-policies",
        nargs="+",
        default=["default"],
        choices=["default", "passive", "active"],
        help="OMP_WAIT_POLICY of the --share processes (default: unset)",
    )
    parser.add_argument("--num-workers", type=int, default=8, help="the loader's workers")
    parser.add_argument("--loader-steps", type=int, default=None, help="default: --steps")
    parser.add_argument("--no-loader", action="store_true", help="skip timing the loader")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument(
        "overrides", nargs="*", help="train-config overrides for the loader, e.g. data.root=..."
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.precisions) - set(PRECISIONS))
    if unknown:
        parser.error(f"--precisions: unknown {unknown}; choose from {list(PRECISIONS)}")
    args.channels_last = [on_off[v] for v in args.channels_last]
    args.compile = [on_off[v] for v in args.compile]
    return args


SHARE_HEADER = (
    "| model | size | batch | precision | channels_last | threads each | OMP_WAIT_POLICY "
    "| processes | img/s alone | img/s each (median) | slowdown |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def threading_env() -> str:
    """The OpenMP settings in the environment, as a command-line prefix: they change the
    figures (README, "CPU speed") and a rerun needs them."""
    names = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    return "".join(f"{name}={os.environ[name]} " for name in names if name in os.environ)


def share_rows(args: argparse.Namespace, out: Path | None = None) -> list[str]:
    """``--share N``: per setting and wait policy, one plain loop alone, then N at once; the
    slowdown is alone / each (2 processes on 2 cores would ideally be 2x)."""
    rows = []
    for size, model in itertools.product(args.sizes, args.models):
        cfg = compose_train_config(
            [f"data.image_size=[{size[0]},{size[1]}]", *model_overrides(model, args.base_channels)]
        )
        batches = device_batches(
            4, args.batch_size, size, cfg.data.num_classes, torch.device("cpu")
        )
        for precision, channels_last, threads, policy in itertools.product(
            args.precisions, args.channels_last, args.threads, args.wait_policies
        ):
            setting = Setting(model, size, precision, channels_last, False, threads)
            log.info("bench --share: %s %s", setting, policy)
            timing = (cfg, setting, batches, args.warmup, args.steps)
            alone = time_shared(*timing, 1, policy)[0]
            each = statistics.median(time_shared(*timing, args.share, policy))
            rows.append(
                f"| {model_label(model, args.base_channels)} | {size_label(size)} "
                f"| {args.batch_size} | {precision} | {'on' if channels_last else 'off'} "
                f"| {threads} | {policy} | {args.share} | {alone:,.1f} | {each:,.1f} "
                f"| {alone / each:.1f}x |"
            )
            log.info("bench: %s", rows[-1])
            if out is not None:
                with out.open("a") as f:
                    f.write(rows[-1] + "\n")
    return rows


def run(args: argparse.Namespace, out: Path | None = None) -> list[str]:
    """Measure the grid; return the table rows (markdown), each also appended to ``out`` as
    soon as it is measured (a run cut short keeps what it measured)."""
    if args.share:
        return share_rows(args, out)
    device = torch.device(args.device)
    rows = []
    for size in args.sizes:
        data = [
            f"data.image_size=[{size[0]},{size[1]}]",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.num_workers}",
            *args.overrides,
        ]
        loader = (
            None
            if args.no_loader
            else time_loader(compose_train_config(data), args.loader_steps or args.steps, device)
        )
        if not args.models and loader is not None:
            rows.append(
                f"| (loader only) | {size_label(size)} | {args.batch_size} | - | - | - | - | - | - "
                f"| - | {loader:,.1f} | - | - |"
            )
            if out is not None:
                with out.open("a") as f:
                    f.write(rows[-1] + "\n")
        for model in args.models:
            cfg = compose_train_config([*data, *model_overrides(model, args.base_channels)])
            flops = training_flops_per_image(cfg, size, device)
            batches = device_batches(4, args.batch_size, size, cfg.data.num_classes, device)
            for precision, channels_last, compiled, threads in itertools.product(
                args.precisions, args.channels_last, args.compile, args.threads
            ):
                setting = Setting(model, size, precision, channels_last, compiled, threads)
                torch.set_num_threads(threads)
                log.info("bench: %s", setting)
                # Interleaved rounds, medians: a load change on a shared machine (or clock
                # boost) then hits both sides alike instead of skewing the overhead ratio.
                trainer_runs, plain_runs = [], []
                for _ in range(args.repeats):
                    trainer_runs.append(
                        time_trainer(cfg, setting, batches, args.warmup, args.steps, device)
                    )
                    plain_runs.append(
                        time_plain_loop(cfg, setting, batches, args.warmup, args.steps, device)
                    )
                trainer_ips = statistics.median(trainer_runs)
                plain_ips = statistics.median(plain_runs)
                peak, _ = peak_tflops(device, precision)
                fraction = trainer_ips * flops / (peak * 1e12) if peak else None
                rows.append(
                    f"| {model_label(model, args.base_channels)} | {size_label(size)} "
                    f"| {args.batch_size} | {precision} | {'on' if channels_last else 'off'} "
                    f"| {'on' if compiled else 'off'} | {threads} "
                    f"| {trainer_ips:,.1f} | {plain_ips:,.1f} "
                    f"| {plain_ips / trainer_ips - 1:+.1%} "
                    f"| {'-' if loader is None else f'{loader:,.1f}'} | {flops / 1e9:,.2f} "
                    f"| {'-' if fraction is None else f'{fraction:.1%}'} |"
                )
                log.info("bench: %s", rows[-1])
                if out is not None:
                    with out.open("a") as f:
                        f.write(rows[-1] + "\n")
    return rows


def model_label(model: str, base_channels: int) -> str:
    return f"UNet base {base_channels}" if model == "unet" else "smp Unet-resnet34"


def start_section(out: Path, args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Append a section heading (device, versions, command, settings) and the table header to
    ``out``; earlier sections are kept as they are."""
    device = torch.device(args.device)
    peaks = {p: peak_tflops(device, p) for p in args.precisions}
    peak_text = "; ".join(
        f"{p}: {'unknown' if v is None else f'{v:,.1f} TFLOP/s'} ({how})"
        for p, (v, how) in peaks.items()
    )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    loader_text = (
        "not timed (--no-loader)"
        if args.no_loader or args.share
        else f"{args.num_workers} workers, augmentation as configured, "
        f"{args.loader_steps or args.steps} batches"
    )
    section = (
        f"\n## {stamp}: {device_name(device)}\n\n"
        f"- versions: {versions()}\n"
        f"- command: `{threading_env()}python -m src.bench {shlex.join(argv)}`\n"
        f"- settings: batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed "
        f"steps on 4 preloaded random batches, "
        + (
            f"plain loops, one alone then {args.share} at once"
            if args.share
            else f"median of {args.repeats} interleaved Trainer / plain-loop rounds"
        )
        + f"; loader: {loader_text}; load average "
        f"at the start {os.getloadavg()[0]:.1f} (other processes may share the CPU)\n"
        f"- peak used for % peak: {peak_text}\n\n" + (SHARE_HEADER if args.share else HEADER)
    )
    if not out.exists():
        out.write_text(BENCHMARKS_INTRO)
    with out.open("a") as f:
        f.write(section)


BENCHMARKS_INTRO = """# Benchmarks

Written by `python -m src.bench` (see its docstring for what each column measures); each run
appends a section, earlier ones are kept. Trainer and plain loop train the same network on the
same preloaded batches in the same process; `overhead` = plain / Trainer - 1 (positive: the
Trainer is slower). `loader img/s`: the DataModule's training loader alone (augmentation, copy
to the device), to compare with the step rate. `% peak`: the Trainer's achieved FLOP/s over
the device's dense peak for that precision.
"""


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    args = parse_args(argv)
    start_section(args.out, args, argv)
    rows = run(args, args.out)
    print(f"{len(rows)} rows appended to {args.out}")


if __name__ == "__main__":
    main()
