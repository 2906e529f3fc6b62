"""How long the viewer takes to predict one scan on the CPU, as its Scan page does
(``src.inference.measure.predict_biometry``: the scan resized to the checkpoint's training
resolution, the network, the logits back at the scan's size, argmax, head biometry):

    python -m src.viewer_app.timing <file.ckpt> <image or folder> [--repeats 5] [--threads N]

Prints the median wall-clock and CPU time and the slowest wall-clock time per scan after one
warm-up prediction. A figure to state, not a test: timings depend on the machine and on what
else runs on it (the CPU time of a one-thread run much less so).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from src.inference.checkpoint import RestoredModel, load_model
from src.inference.images import list_inputs, read_image
from src.inference.measure import predict_biometry


def seconds_per_scan(
    model: RestoredModel, scans: Sequence[np.ndarray], repeats: int
) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of each prediction: every scan ``repeats`` times, after
    one warm-up (the first call allocates and picks kernels). The CPU time of the process
    is what a prediction costs on cores nobody else uses; on a busy machine the wall clock
    is longer."""
    predict_biometry(model, scans[0])
    wall, cpu = [], []
    for scan in scans:
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            predict_biometry(model, scan)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt_path", type=Path)
    parser.add_argument(
        "input", type=Path, help="an image file (PNG, JPEG, ...), or a folder of them"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.ckpt_path, map_location="cpu")
    scans = [read_image(path) for path in list_inputs(args.input)]
    wall, cpu = seconds_per_scan(model, scans, args.repeats)
    height, width = model.image_size
    print(
        f"{len(wall)} predictions at {height} x {width} px on {torch.get_num_threads()} CPU "
        f"thread(s): median {statistics.median(wall):.3f} s wall-clock "
        f"({statistics.median(cpu):.3f} s CPU time), slowest {max(wall):.3f} s per scan"
    )


if __name__ == "__main__":
    main()
