"""An exported model (``python -m src.export``) read and run without PyTorch.

A package is a folder with ``model.onnx`` (the network, or the folds' ensemble averaged in the
graph: input ``image`` (B, C, H, W) float32 at the training size, output ``logits`` (B, K, H, W))
and ``model.json``, the sidecar that says everything else the pipeline needs: classes, colours,
input size and channels, intensity scaling, test-time flips, post-processing rules, the
quality threshold, multi-label or not, and where it came from. The resizing to the network's
input and of the logits back to the image's size happens here with OpenCV, as the torch
predictor does it (``src.inference.views``), because the output must take each image's own
size, which an ONNX graph can only get from an extra input. numpy, OpenCV and onnxruntime only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.data.cache import resize_image
from src.data.images import image_array
from src.inference.quality import checkpoint_threshold
from src.inference.views import View, logits_back, view_inputs

PACKAGE_FORMAT = 1
MODEL_ONNX = "model.onnx"
SIDECAR = "model.json"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# How an image becomes the network's input; the sidecar states it, the reader checks it.
INTENSITY = "uint8 / 255 -> float32 in [0, 1], grey (1, H, W) or RGB (3, H, W)"
SIDECAR_KEYS = (
    "format",
    "sonoseg_version",
    "class_names",
    "image_size",
    "in_channels",
    "intensity",
    "multilabel",
    "tta_flip",
    "postprocess",
)


def is_package(path: str | Path) -> bool:
    """A folder that holds a sidecar or an ONNX model: it is meant as a package."""
    path = Path(path)
    return path.is_dir() and ((path / SIDECAR).exists() or (path / MODEL_ONNX).exists())


def read_sidecar(folder: Path) -> dict:
    """``model.json`` of a package, checked: one line naming the file and what is wrong."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        raise ValueError(f"{folder}: no {SIDECAR} (expected a package of python -m src.export)")
    try:
        sidecar = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not JSON ({error})") from error
    if not isinstance(sidecar, dict):
        raise ValueError(f"{path}: expected a JSON object")
    if sidecar.get("format") != PACKAGE_FORMAT:
        raise ValueError(
            f"{path}: package format {sidecar.get('format')!r} (written by sonoseg "
            f"{sidecar.get('sonoseg_version', '?')}); this sonoseg reads format {PACKAGE_FORMAT}: "
            "export the checkpoint again with this version"
        )
    missing = [key for key in SIDECAR_KEYS if key not in sidecar]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    if sidecar["intensity"] != INTENSITY:
        raise ValueError(
            f"{path}: intensity {sidecar['intensity']!r}; this reader does {INTENSITY!r}"
        )
    return sidecar


@dataclass
class OnnxModel:
    """An exported package, ready to predict: what ``src.predict`` and the viewer need of a
    model (``src.inference.measure.Segmenter``) and the package's recorded settings."""

    folder: Path
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    in_channels: int
    multilabel: bool
    tta_flip: bool
    postprocess: dict | None
    quality_threshold: float | None
    sidecar: dict
    session: object = field(repr=False)
    context: None = None  # 2.5D models are not exported

    @property
    def checkpoint_path(self) -> Path:  # where messages say the model came from
        return self.folder

    def view_logits(self, image: np.ndarray, views: Sequence[View]) -> np.ndarray:
        """float32 logits (V, K, H, W) of the views of a uint8 image, at its original size."""
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"expected a uint8 (H, W) or (H, W, C) image, got {image.dtype} {image.shape}"
            )
        base = image_array(resize_image(image, self.image_size))
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: view_inputs(base, views)})
        return logits_back(logits, views, image.shape[:2])


def load_package(folder: str | Path, threads: int | None = None) -> OnnxModel:
    """The package in ``folder`` with an onnxruntime CPU session (``threads``: its intra-op
    threads; None: onnxruntime's choice)."""
    folder = Path(folder)
    sidecar = read_sidecar(folder)
    model_path = folder / MODEL_ONNX
    if not model_path.is_file():
        raise ValueError(f"{folder}: no {MODEL_ONNX} beside {SIDECAR}")
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            "onnxruntime is not installed: pip install 'sonoseg[deploy]' (or onnxruntime)"
        ) from error
    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ValueError(f"{model_path}: onnxruntime cannot load it: {error}") from error
    height, width = (int(v) for v in sidecar["image_size"])
    return OnnxModel(
        folder=folder,
        class_names=tuple(sidecar["class_names"]),
        image_size=(height, width),
        in_channels=int(sidecar["in_channels"]),
        multilabel=bool(sidecar["multilabel"]),
        tta_flip=bool(sidecar["tta_flip"]),
        postprocess=sidecar["postprocess"] or None,
        quality_threshold=sidecar.get("quality_threshold"),
        sidecar=sidecar,
        session=session,
    )


def load_segmenter(ckpt_paths: str | Path | Sequence[str | Path], map_location: str = "cpu"):
    """What ``src.predict`` and the viewer take as a model: one package folder (torch is never
    imported), or one or more checkpoints (``load_ensemble``: an ensemble of several)."""
    paths = [ckpt_paths] if isinstance(ckpt_paths, str | Path) else list(ckpt_paths)
    packages = [p for p in paths if is_package(p)]
    if packages:
        if len(paths) != 1:
            raise ValueError(
                f"ckpt_path: {packages[0]} is an exported package; give one package folder "
                "(a fold ensemble is exported as one package) or checkpoints only"
            )
        return load_package(paths[0])
    from src.inference.checkpoint import load_ensemble  # torch: only for checkpoints

    return load_ensemble(paths, map_location=map_location)


def recorded_threshold(model, ckpt_paths: Sequence[str | Path]) -> float | None:
    """The quality flag's threshold: the package's, or the checkpoints' summary.json's."""
    if isinstance(model, OnnxModel):
        return model.quality_threshold
    return checkpoint_threshold(ckpt_paths)
