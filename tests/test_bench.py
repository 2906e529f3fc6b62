"""python -m src.bench on the smallest settings: the rows it appends to BENCHMARKS.md."""

from __future__ import annotations

import re

import torch

from src.bench import HEADER, main, peak_tflops

TINY = [
    "--threads",
    "1",
    "--models",
    "unet",
    "--sizes",
    "32",
    "--base-channels",
    "4",
    "--batch-size",
    "2",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--repeats",
    "1",
    "--precisions",
    "32-true",
    "--channels-last",
    "off",
    "--compile",
    "off",
    "--num-workers",
    "0",
]


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def test_bench_appends_a_section_per_run_and_keeps_earlier_ones(phantom_raw, tmp_path, monkeypatch):
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(name, raising=False)  # else the command line starts with them
    out = tmp_path / "BENCHMARKS.md"
    data = [
        f"data.root={phantom_raw}",
        "data.synthetic=null",
        f"data.cache_dir={tmp_path / 'prepared'}",
    ]
    main([*TINY, "--out", str(out), *data])
    first = out.read_text()
    main([*TINY, "--precisions", "bf16-mixed", "--no-loader", "--out", str(out)])
    text = out.read_text()
    assert text.startswith(first)  # the first run's section is kept as written
    assert text.count("# Benchmarks") == 1
    sections = re.findall(r"^## .*: CPU: .*$", text, flags=re.MULTILINE)
    assert len(sections) == 2
    assert text.count(HEADER) == 2
    assert (
        "- versions: torch " in text
        and "- command: `python -m src.bench --threads 1 --models unet" in text
    )
    rows = [line for line in text.splitlines() if line.startswith("| UNet base 4 |")]
    assert len(rows) == 2
    first_row, second_row = map(_cells, rows)
    assert first_row[:7] == ["UNet base 4", "32", "2", "32-true", "off", "off", "1"]
    assert second_row[3] == "bf16-mixed"
    trainer, plain, loader = (float(first_row[i].replace(",", "")) for i in (7, 8, 10))
    assert trainer > 0 and plain > 0 and loader > 0
    assert second_row[10] == "-"  # --no-loader
    second_section = text[len(first) :]
    assert (
        "loader: not timed (--no-loader)" in second_section
        and "augmentation as" not in second_section
    )
    # The written overhead agrees with the written rates up to their rounding (0.1 img/s each,
    # 0.1% for the overhead): a check of what the code wrote, whatever the machine's load.
    overhead = float(first_row[9].rstrip("%")) / 100
    lowest = (plain - 0.05) / (trainer + 0.05) - 1
    highest = (plain + 0.05) / (trainer - 0.05) - 1
    assert lowest - 0.0005 <= overhead <= highest + 0.0005
    assert float(first_row[11]) > 0  # GFLOP per training image


def test_peak_is_an_estimate_on_a_cpu():
    peak, how = peak_tflops(torch.device("cpu"), "32-true")
    assert how.startswith("estimate") or how.startswith("unknown")
    assert peak is None or peak > 0
