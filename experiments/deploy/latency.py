"""Per-scan latency and CPU time of PyTorch eager against the exported ONNX package (float32
and int8), at 1 and 2 threads, for the CPU recipe's network and the full-size one.

    python experiments/deploy/latency.py [--scans <folder>] [--calibration <folder>]
        [--ckpt <a trained CPU-recipe checkpoint>] [--repeats 3] [--out <csv>]

Each network is built from its experiment's config with random weights (latency does not
depend on the weights; ``--ckpt``: the CPU recipe's trained weights instead), saved as a
sonoseg checkpoint, exported with ``src.export`` (int8: ``quantize=int8`` calibrated on
``--calibration``, other scans than the timed ones), and timed on the same scans in one
process: one view per scan (no flips), from the uint8 scan at its own size to the logits at
that size, as ``src.predict`` runs it. The masks are compared with PyTorch's (mean Dice over
the classes either has); with random weights that comparison says little (n/a).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from src.data.classes import FETAL_HEAD, HC18_HEAD  # noqa: E402
from src.data.readers.hc18 import OUTLINE  # noqa: E402
from src.export import export  # noqa: E402
from src.inference.checkpoint import checkpoint_payload, load_model  # noqa: E402
from src.inference.images import list_inputs, read_image  # noqa: E402
from src.inference.package import load_package  # noqa: E402
from src.inference.views import IDENTITY, labels_from_logits  # noqa: E402
from src.models.speed import split_speed_options  # noqa: E402

# name: (experiment, class names, input size)
NETWORKS = {
    "CPU recipe (hc18_cpu: UNet width 16, 128x192)": ("hc18_cpu", HC18_HEAD.names, None),
    "full size (unet_dice: UNet width 64, 256x384)": ("unet_dice", FETAL_HEAD.names, [256, 384]),
}


def build_checkpoint(experiment: str, class_names, image_size, folder: Path) -> Path:
    """A checkpoint of the experiment's network with random weights."""
    overrides = [f"+experiment={experiment}"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides)
    size = image_size or list(cfg.data.image_size)
    config, _ = split_speed_options(OmegaConf.to_container(cfg.model, resolve=True))
    config["in_channels"] = 1
    import hydra

    net = hydra.utils.instantiate(config)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    path = folder / f"{experiment}.ckpt"
    payload = checkpoint_payload(config, class_names, size, 1)
    torch.save({"state_dict": state, "sonoseg": payload}, path)
    return path


def synthetic_scans(n: int) -> list[np.ndarray]:
    """Smoothed noise at the fetal head record's 959 x 661 (when no --scans are given)."""
    import cv2

    rng = np.random.default_rng(0)
    return [cv2.resize((rng.random((66, 96)) * 255).astype(np.uint8), (959, 661)) for _ in range(n)]


def timed(run, scans, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds per scan (one warm-up pass first)."""
    for scan in scans[:1]:
        run(scan)
    walls, cpus = [], []
    for _ in range(repeats):
        for scan in scans:
            wall, cpu = time.perf_counter(), time.process_time()
            run(scan)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return float(np.median(walls)), float(np.median(cpus))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    labels = [k for k in np.union1d(np.unique(a), np.unique(b)) if k]
    scores = [2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in labels]
    return float(np.mean(scores)) if scores else 1.0


def mean_dice(labels: list[np.ndarray], reference: list[np.ndarray]) -> float:
    return round(float(np.mean([dice(a, b) for a, b in zip(labels, reference, strict=True)])), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scans",
        help="a folder of grey scans, HC18 outlines (*_Annotation.png) left out "
        "(default: synthetic ones at 959 x 661)",
    )
    parser.add_argument("--calibration", help="a folder of scans to calibrate int8 on")
    parser.add_argument("--ckpt", help="trained weights for the CPU recipe's network")
    parser.add_argument("--n-scans", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "experiments" / "deploy" / "latency.csv"))
    args = parser.parse_args()
    if args.scans:
        files = [p for p in list_inputs(args.scans) if not p.name.endswith(OUTLINE)]
        scans = [read_image(p, 1) for p in files[: args.n_scans]]
    else:
        scans = synthetic_scans(args.n_scans)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, (experiment, classes, size) in NETWORKS.items():
            trained = args.ckpt is not None and experiment == "hc18_cpu"
            ckpt = (
                Path(args.ckpt) if trained else build_checkpoint(experiment, classes, size, folder)
            )
            export(ckpt, folder / f"{experiment}-fp32", postprocess=None)
            export(
                ckpt,
                folder / f"{experiment}-int8",
                postprocess=None,
                quantize="int8",
                check_input=args.calibration,
            )
            model = load_model(ckpt)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                runners = {
                    "pytorch eager": model,
                    "onnxruntime fp32": load_package(folder / f"{experiment}-fp32", threads),
                    "onnxruntime int8": load_package(folder / f"{experiment}-int8", threads),
                }
                reference = [labels_from_logits(model.view_logits(s, [IDENTITY])[0]) for s in scans]
                base = None
                for runner_name, runner in runners.items():
                    with torch.no_grad():
                        wall, cpu = timed(
                            lambda s, r=runner: r.view_logits(s, [IDENTITY]), scans, args.repeats
                        )
                        labels = [
                            labels_from_logits(runner.view_logits(s, [IDENTITY])[0]) for s in scans
                        ]
                    base = base or wall
                    rows.append(
                        {
                            "network": name,
                            "threads": threads,
                            "runtime": runner_name,
                            "ms_per_scan": round(1000 * wall, 1),
                            "cpu_ms_per_scan": round(1000 * cpu, 1),
                            "speedup_vs_eager": round(base / wall, 2),
                            "mask_dice_vs_eager": mean_dice(labels, reference)
                            if trained
                            else "n/a",
                        }
                    )
                    print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out, index=False)
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}; scans: "
        f"{args.scans or 'synthetic'} ({len(scans)} at {scans[0].shape[1]}x{scans[0].shape[0]})"
    )
    print(table.to_string(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
