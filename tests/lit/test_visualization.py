"""ValidationImages in short CPU fits on the session's tiny phantom (64 px)."""

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import wandb
from hydra import compose, initialize_config_dir

from src.lit.visualization import ValidationImages
from src.train import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_overrides(tiny_run) -> list[str]:
    return [*tiny_run, "trainer.limit_train_batches=2", "test=false"]


def fit(output_dir: Path, overrides: list[str], *extra: str) -> None:
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, *extra, f"paths.output_dir={output_dir}"])
    train(cfg)


def test_png_grids_every_k_epochs_and_dice_curves(data_overrides, tmp_path):
    fit(
        tmp_path,
        data_overrides,
        "trainer.max_epochs=3",
        "callbacks.validation_images.every_n_epochs=2",
        "callbacks.validation_images.num_images=2",
    )
    folder = tmp_path / "val_images"
    assert sorted(p.name for p in folder.iterdir()) == [
        "dice_curves.png",
        "epoch_000.png",
        "epoch_002.png",
    ]
    first = cv2.imread(str(folder / "epoch_000.png"))
    later = cv2.imread(str(folder / "epoch_002.png"))
    assert first.shape == later.shape and first.shape[0] > 2 * 64 and first.shape[1] > 3 * 64
    # The same images each time: the image column is identical, the predictions may change.
    np.testing.assert_array_equal(first[:, :64], later[:, :64])
    assert cv2.imread(str(folder / "dice_curves.png")) is not None


def test_wandb_gets_mask_overlays_with_class_labels(data_overrides, tmp_path, monkeypatch):
    built: list[wandb.Image] = []

    class RecordingImage(wandb.Image):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(wandb, "Image", RecordingImage)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    fit(
        tmp_path,
        data_overrides,
        "logger=wandb",
        "trainer.max_epochs=1",
        "callbacks.validation_images.num_images=3",
    )
    assert len(built) == 3
    masks = built[0]._masks
    assert set(masks) == {"predictions", "ground_truth"}
    for mask in masks.values():  # wandb keeps the dict it was given as _val
        assert mask._val["class_labels"] == {0: "background", 1: "brain", 2: "csp", 3: "lv"}
        assert mask._val["mask_data"].shape == (64, 64)
    assert masks["ground_truth"]._val["mask_data"].max() > 0  # a real validation mask
    assert not (tmp_path / "val_images" / "epoch_000.png").exists()  # W&B instead of PNGs
    # The offline run holds the logged images and their masks.
    media = next((tmp_path / "wandb").glob("offline-run-*/files/media/images"))
    # (wandb stores a file once per content: identical images or masks share one)
    assert list((media / "val").glob("images_*.png"))
    assert list((media / "mask" / "val").glob("images_*.mask.png"))


def test_rejects_nonsense_settings():
    with pytest.raises(ValueError, match="every_n_epochs"):
        ValidationImages(every_n_epochs=0)


@pytest.mark.slow
def test_cost_of_the_callback(data_overrides, tmp_path, monkeypatch):
    """Wall time of a short fit with and without the callback (alternated, best of three:
    the machine is shared), and the time spent in its image logging itself (printed; -s)."""
    in_callback = []
    log_images = ValidationImages.log_images

    def timed(self, *args):
        started = time.perf_counter()
        log_images(self, *args)
        in_callback.append(time.perf_counter() - started)

    monkeypatch.setattr(ValidationImages, "log_images", timed)
    common = [
        *data_overrides,
        "trainer.max_epochs=5",
        "trainer.limit_train_batches=1.0",
        "callbacks.validation_images.every_n_epochs=1",
    ]
    fit(tmp_path / "warm-up", common, "trainer.max_epochs=1")  # cache and imports
    seconds: dict[str, list[float]] = {"without": [], "with": []}
    for repeat in range(3):
        for name, extra in (("without", "callbacks.validation_images=null"), ("with", "seed=42")):
            started = time.perf_counter()
            fit(tmp_path / f"{name}-{repeat}", common, extra)
            seconds[name].append(time.perf_counter() - started)
    assert len(list((tmp_path / "with-0" / "val_images").glob("epoch_*.png"))) == 5
    per_epoch = sorted(in_callback[1:])  # the warm-up's first call reads the images
    print(
        f"\n5 epochs at 64 px, best of 3: without the callback {min(seconds['without']):.2f} s, "
        f"with it (images every epoch) {min(seconds['with']):.2f} s; its image logging "
        f"{1000 * per_epoch[len(per_epoch) // 2]:.0f} ms per logged epoch (median)"
    )
