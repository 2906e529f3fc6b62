"""Export a checkpoint (or a fold ensemble) as a self-describing ONNX package.

    python -m src.export ckpt_path=<file.ckpt or [a.ckpt,b.ckpt]> out_dir=<folder>
        [tta_flip=true] [postprocess=auto|null|{...}] [check_input=<image|folder>]
        [quantize=int8] [overwrite=true]

Writes ``model.onnx`` (dynamic batch; several checkpoints: the log of their mean softmax, as
``src.inference.checkpoint.Ensemble``, inside the graph) and ``model.json``
(``src.inference.package``), after checking that onnxruntime's logits match PyTorch's on the
check images (the largest absolute difference is printed and recorded). The folder is built
aside and moved in when complete; an existing package is replaced only with ``overwrite=true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import src
from src.data.cache import resize_image
from src.data.images import image_array
from src.data.prepared import check_replaceable, replace_dir, staging_dir
from src.inference.checkpoint import RestoredModel, load_ensemble
from src.inference.images import list_inputs, read_image
from src.inference.package import (
    INPUT_NAME,
    INTENSITY,
    MODEL_ONNX,
    OUTPUT_NAME,
    PACKAGE_FORMAT,
    SIDECAR,
    load_package,
)
from src.inference.quality import checkpoint_threshold, evaluated_settings
from src.inference.views import IDENTITY, labels_from_logits
from src.runs import summary_path
from src.visualize import class_colours

log = logging.getLogger(__name__)

PACKAGE_KIND = "model package"


def sonoseg_version() -> str:
    try:
        return version("sonoseg")
    except PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_auto(paths: list[Path], tta_flip, postprocess) -> tuple[bool, dict | None]:
    """``auto`` settings as the checkpoint was evaluated with (``evaluated_settings``), with
    a warning where nothing was recorded (an ensemble, or a checkpoint never evaluated): no
    flips, no rules."""
    recorded = evaluated_settings(paths)
    where = summary_path(paths[0].parent) if len(paths) == 1 else "an ensemble"
    if tta_flip == "auto":
        tta_flip = recorded["tta_flip"]
        if tta_flip is None:
            log.warning("tta_flip=auto: %s records no flips setting; exporting without", where)
    if postprocess == "auto":
        postprocess = recorded["rules"]
        if not postprocess:
            log.warning("postprocess=auto: %s records no rules; exporting without", where)
    return bool(tta_flip), postprocess or None


def check_images(check_input: str | None, model: RestoredModel) -> list[np.ndarray]:
    """The images of ``check_input``, else one fixed synthetic image at the training size
    (smoothed noise: every pixel value and edge kind occurs)."""
    if check_input is not None:
        return [read_image(path, model.in_channels) for path in list_inputs(check_input)]
    rng = np.random.default_rng(0)
    height, width = model.image_size
    noise = rng.random((height // 4, width // 4, model.in_channels)).astype(np.float32)
    image = resize_image(
        (noise * 255).astype(np.uint8).squeeze(-1 if model.in_channels == 1 else None),
        (height, width),
    )
    return [image]


def export_onnx(model: RestoredModel, path: Path, opset: int) -> None:
    net = model.net.float().eval()
    height, width = model.image_size
    example = torch.zeros(1, model.in_channels, height, width)
    try:
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,  # the TorchScript exporter: no onnxscript needed, plain opset ops
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
        )
    except Exception as error:  # the exporter raises many kinds; say what could not go
        raise ValueError(
            f"{model.checkpoint_path}: {type(net).__name__} cannot be exported to ONNX: {error}"
        ) from error


def max_logit_difference(model: RestoredModel, onnx_model, images: list[np.ndarray]) -> float:
    """The largest |PyTorch - onnxruntime| logit over the check images, at the network's size."""
    worst = 0.0
    for image in images:
        x = image_array(resize_image(image, model.image_size))[None]
        with torch.no_grad():
            expected = model.net(torch.from_numpy(x)).float().numpy()
        (actual,) = onnx_model.session.run([OUTPUT_NAME], {INPUT_NAME: x})
        worst = max(worst, float(np.abs(expected - actual).max()))
    return worst


def _mean_dice(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the classes either map has (foreground), 1 when neither has any."""
    scores = []
    for k in range(1, num_classes):
        x, y = a == k, b == k
        total = x.sum() + y.sum()
        if total:
            scores.append(2 * np.logical_and(x, y).sum() / total)
    return float(np.mean(scores)) if scores else 1.0


def quantize_int8(staging: Path, reference, images: list[np.ndarray]) -> dict:
    """Replace the package's model by onnxruntime's static int8 quantization of it (QDQ,
    weights per channel, activations calibrated on ``images`` prepared as the predictor
    prepares them: onnxruntime then runs QLinearConv kernels, several times faster than
    float32 on a CPU with VNNI); the labels' Dice against float32 on the same images
    (multi-label: over the bitmask values)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inputs = [
        {INPUT_NAME: image_array(resize_image(i, reference.image_size))[None]} for i in images
    ]

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(inputs)

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    float_path, prepared = staging / "model.float32.onnx", staging / "model.prepared.onnx"
    (staging / MODEL_ONNX).rename(float_path)
    quant_pre_process(str(float_path), str(prepared))
    quantize_static(
        str(prepared),
        str(staging / MODEL_ONNX),
        Calibration(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    float_path.unlink()
    prepared.unlink()
    quantized = load_package(staging)
    multilabel = reference.multilabel
    dice = [
        _mean_dice(
            labels_from_logits(reference.view_logits(image, (IDENTITY,))[0], multilabel=multilabel),
            labels_from_logits(quantized.view_logits(image, (IDENTITY,))[0], multilabel=multilabel),
            1 << len(reference.class_names) if multilabel else len(reference.class_names),
        )
        for image in images
    ]
    return {
        "type": "int8 static, QDQ, per-channel weights (onnxruntime)",
        "calibration_images": len(images),
        "dice_vs_float32": float(np.mean(dice)),
        "min_dice_vs_float32": float(np.min(dice)),
    }


def export(
    ckpt_path,
    out_dir,
    *,
    tta_flip="auto",
    postprocess="auto",
    check_input=None,
    quantize=None,
    opset=17,
    overwrite=False,
) -> dict:
    """Write the package (see the module docstring); returns its sidecar."""
    paths = [Path(p) for p in ([ckpt_path] if isinstance(ckpt_path, str | Path) else ckpt_path)]
    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite, [SIDECAR], PACKAGE_KIND)
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize}: expected null or int8")
    model = load_ensemble(paths)
    if model.context is not None:
        raise ValueError(f"{paths[0]}: a 2.5D model (a stack of slices in) is not exported")
    if model.in_channels not in (1, 3):
        raise ValueError(f"{paths[0]}: {model.in_channels} input channels; grey or RGB only")
    tta_flip, rules = resolve_auto(paths, tta_flip, postprocess)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_root = staging_dir(out_dir, "tmp")
    try:
        staging = staging_root / out_dir.name
        staging.mkdir()
        export_onnx(model, staging / MODEL_ONNX, opset)
        sidecar = {
            "format": PACKAGE_FORMAT,
            "sonoseg_version": sonoseg_version(),
            "class_names": list(model.class_names),
            "label_ids": list(range(len(model.class_names))),
            "colours": [list(c) for c in class_colours(model.class_names)],
            "image_size": list(model.image_size),
            "in_channels": model.in_channels,
            "intensity": INTENSITY,
            "multilabel": model.multilabel,
            "tta_flip": bool(tta_flip),
            "postprocess": rules,
            "quality_threshold": checkpoint_threshold(paths),
            "ensemble": len(paths),
            "source": [{"checkpoint": str(p.resolve()), "sha256": _sha256(p)} for p in paths],
            "opset": opset,
        }
        (staging / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        images = check_images(check_input, model)
        exported = load_package(staging)
        difference = max_logit_difference(model, exported, images)
        log.info(
            "ONNX vs PyTorch logits on %d check image(s): max |difference| %.3g",
            len(images),
            difference,
        )
        sidecar["check"] = {"images": len(images), "max_abs_logit_difference": difference}
        if quantize == "int8":
            sidecar["quantized"] = quantize_int8(staging, exported, images)
            log.info("int8: labels' Dice vs float32 %.4f", sidecar["quantized"]["dice_vs_float32"])
        (staging / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        replace_dir(out_dir, staging, overwrite, [SIDECAR], PACKAGE_KIND)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    log.info("package written to %s", out_dir)
    return sidecar


@hydra.main(config_path=src.CONF_DIR, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)
    export(
        config["ckpt_path"],
        cfg.out_dir,
        tta_flip=cfg.tta_flip,
        postprocess=config["postprocess"],
        check_input=cfg.check_input,
        quantize=cfg.quantize,
        opset=cfg.opset,
        overwrite=cfg.overwrite,
    )


if __name__ == "__main__":
    main()
