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
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import src
from src.data.cache import resize_image
from src.data.images import image_array
from src.data.prepared import check_replaceable, replace_dir
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
from src.inference.quality import checkpoint_threshold
from src.inference.views import IDENTITY, labels_from_logits
from src.runs import read_summary, summary_path
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


def recorded_rules(paths: list[Path]) -> dict | None:
    """``postprocess=auto``: the rules of the checkpoint's summary.json (one checkpoint);
    none for an ensemble or a checkpoint never evaluated, with a warning."""
    if len(paths) != 1:
        log.warning("postprocess=auto: an ensemble records no rules; exporting without any")
        return None
    path = summary_path(paths[0].parent)
    rules = None
    if path.is_file():
        rules = (read_summary(path, required=()).get("postprocess") or {}).get("rules")
    if not rules:
        log.warning("%s records no post-processing rules: exporting without any", path)
    return rules or None


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
    """Replace the package's model by onnxruntime's dynamic int8 quantization of it; the
    labels' Dice against float32 on the check images."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_path = staging / "model.float32.onnx"
    (staging / MODEL_ONNX).rename(float_path)
    quantize_dynamic(str(float_path), str(staging / MODEL_ONNX), weight_type=QuantType.QInt8)
    float_path.unlink()
    quantized = load_package(staging)
    dice = []
    for image in images:
        views = (IDENTITY,)
        a = labels_from_logits(
            reference.view_logits(image, views)[0], multilabel=reference.multilabel
        )
        b = labels_from_logits(
            quantized.view_logits(image, views)[0], multilabel=reference.multilabel
        )
        dice.append(_mean_dice(a, b, len(reference.class_names)))
    return {"type": "int8 dynamic (onnxruntime)", "dice_vs_float32": float(np.mean(dice))}


def export(
    ckpt_path,
    out_dir,
    *,
    tta_flip=False,
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
    rules = recorded_rules(paths) if postprocess == "auto" else (postprocess or None)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_root = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
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
