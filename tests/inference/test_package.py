"""The exported ONNX package (src.export, src.inference.package): the same masks and head
circumferences as src.predict on the checkpoint, with PyTorch unimportable; fold ensembles;
one clear line for a package of another version, a missing sidecar or an unreadable image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from src.export import export
from src.inference.checkpoint import load_model
from src.inference.package import SIDECAR, load_package, read_sidecar
from src.inference.views import IDENTITY
from src.predict import predict

ROOT = Path(__file__).resolve().parents[2]
PIXEL_MM = "0.1"

# src.predict run as a user types it, with torch made unimportable before anything starts.
WITHOUT_TORCH = """
import runpy, sys
sys.modules["torch"] = None
sys.argv = ["src.predict", *sys.argv[1:]]
try:
    runpy.run_module("src.predict", run_name="__main__")
finally:
    assert sys.modules["torch"] is None, "torch was imported"
"""


@pytest.fixture(scope="module")
def scans(prepared_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for path in sorted((prepared_dir / "images").rglob("*.png"))[:4]:
        shutil.copy(path, folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tiny_trained_run, scans, tmp_path_factory) -> Path:
    """The tiny trained UNet, its output biases shifted so that every class has the same mean
    logit on the scans: trained for one step it labels every pixel CSP, and equal masks
    would prove nothing. Now every class occurs, with boundaries where logits nearly tie."""
    source = next((tiny_trained_run / "checkpoints").glob("epoch_*.ckpt"))
    model = load_model(source)
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(scans.iterdir())]
    logits = np.concatenate([model.view_logits(image, [IDENTITY]) for image in images])
    means = torch.from_numpy(logits.mean(axis=(0, 2, 3)))
    data = torch.load(source, weights_only=True)
    data["state_dict"]["net.head.bias"] -= means - means.mean()
    path = tmp_path_factory.mktemp("fold0") / "balanced.ckpt"
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def other_checkpoint(checkpoint, tmp_path_factory) -> Path:
    """A second model: the first one's weights, perturbed (a stand-in for another fold)."""
    data = torch.load(checkpoint, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for value in data["state_dict"].values():
        if value.is_floating_point() and value.ndim > 1:
            value += 0.2 * value.std() * torch.randn(value.shape, generator=generator)
    path = tmp_path_factory.mktemp("fold1") / "other.ckpt"
    torch.save(data, path)
    return path


def _predict_without_torch(package: Path, scans: Path, out_dir: Path) -> None:
    args = [f"ckpt_path={package}", f"input={scans}", f"out_dir={out_dir}"]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *args, f"pixel_size_mm={PIXEL_MM}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the labels either map has of the per-label Dice; 1 when both are empty."""
    scores = [
        2 * np.logical_and(a == k, b == k).sum() / ((a == k).sum() + (b == k).sum())
        for k in np.union1d(np.unique(a), np.unique(b))
        if k != 0
    ]
    return float(np.mean(scores)) if scores else 1.0


def _assert_same_predictions(onnx_dir: Path, torch_dir: Path) -> None:
    onnx_rows = pd.read_csv(onnx_dir / "biometry.csv")
    torch_rows = pd.read_csv(torch_dir / "biometry.csv")
    assert len(onnx_rows) == len(torch_rows) == 4
    assert torch_rows["head_found"].any()  # head circumferences were compared
    for mine, theirs in zip(onnx_rows.itertuples(), torch_rows.itertuples(), strict=True):
        a = cv2.imread(str(onnx_dir / mine.mask), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(torch_dir / theirs.mask), cv2.IMREAD_UNCHANGED)
        assert len(np.unique(b)) >= 3  # masks with several classes were compared
        assert _dice(a, b) >= 0.999, mine.mask
        assert mine.head_found == theirs.head_found
        if theirs.head_found:
            assert abs(mine.hc - theirs.hc) <= 0.1, mine.mask


def test_a_package_predicts_like_its_checkpoint_without_torch(checkpoint, scans, tmp_path):
    package = tmp_path / "package"
    sidecar = export(checkpoint, package, postprocess=None, tta_flip=True, check_input=scans)
    assert sidecar["check"]["max_abs_logit_difference"] < 1e-3
    assert read_sidecar(package)["tta_flip"] is True
    assert (package / "model.onnx").is_file()

    _predict_without_torch(package, scans, tmp_path / "onnx")
    predict(checkpoint, scans, tmp_path / "torch", pixel_size_mm=float(PIXEL_MM), tta_flip=True)
    _assert_same_predictions(tmp_path / "onnx", tmp_path / "torch")


def test_an_exported_fold_ensemble_predicts_like_the_checkpoints(
    checkpoint, other_checkpoint, scans, tmp_path
):
    package = tmp_path / "ensemble"
    sidecar = export([checkpoint, other_checkpoint], package, postprocess=None, check_input=scans)
    assert sidecar["ensemble"] == 2 and len(sidecar["source"]) == 2
    _predict_without_torch(package, scans, tmp_path / "onnx")
    predict([checkpoint, other_checkpoint], scans, tmp_path / "torch", pixel_size_mm=0.1)
    _assert_same_predictions(tmp_path / "onnx", tmp_path / "torch")
    # The ensemble differs from each of its members somewhere (the test can fail).
    predict(checkpoint, scans, tmp_path / "single", pixel_size_mm=0.1)
    single = pd.read_csv(tmp_path / "single" / "biometry.csv")
    ensemble = pd.read_csv(tmp_path / "torch" / "biometry.csv")
    assert not np.allclose(single["hc"].fillna(0), ensemble["hc"].fillna(0))


def test_int8_quantization_reports_its_dice_change(checkpoint, scans, tmp_path):
    sidecar = export(
        checkpoint, tmp_path / "int8", postprocess=None, check_input=scans, quantize="int8"
    )
    assert 0.0 <= sidecar["quantized"]["dice_vs_float32"] <= 1.0
    assert load_package(tmp_path / "int8").sidecar["quantized"] == sidecar["quantized"]


def test_broken_packages_and_inputs_get_one_clear_line(checkpoint, scans, tmp_path):
    package = tmp_path / "package"
    export(checkpoint, package, postprocess=None)
    other_version = tmp_path / "other_version"
    shutil.copytree(package, other_version)
    sidecar = json.loads((other_version / SIDECAR).read_text())
    (other_version / SIDECAR).write_text(
        json.dumps(sidecar | {"format": 99, "sonoseg_version": "9.0"})
    )
    with pytest.raises(ValueError, match=r"package format 99 \(written by sonoseg 9.0\).*export"):
        load_package(other_version)
    no_sidecar = tmp_path / "no_sidecar"
    no_sidecar.mkdir()
    shutil.copy(package / "model.onnx", no_sidecar)
    with pytest.raises(ValueError, match="no model.json"):
        load_package(no_sidecar)
    # An existing package is not replaced without overwrite=true.
    with pytest.raises(FileExistsError):
        export(checkpoint, package, postprocess=None)
    # A file that is not an image is skipped with its reason; the others are predicted.
    inputs = tmp_path / "inputs"
    shutil.copytree(scans, inputs)
    (inputs / "notes.png").write_text("not an image")
    report = predict(package, inputs, tmp_path / "out", pixel_size_mm=0.1)
    assert len(report.rows) == 4
    (reason,) = report.skipped.values()
    assert "notes.png" in reason and "\n" not in reason
