"""The decoded-image cache: equal to resizing the PNGs, built once per key, atomic."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from src.data import cache
from src.data.cache import build_cache, cache_dir_for, open_cache, resize_image, resize_mask
from src.data.prepared import STAGING_OWNER, build_dir_atomically, staging_dir
from src.data.readers.fetal_head import prepare_dataset
from src.denoise.classical import Median

ROOT = Path(__file__).resolve().parents[2]

NUM_CLASSES = 4


def write_prepared_dir(
    out: Path,
    rows: list[tuple[str, str]],
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
    channels: int = 1,
) -> Path:
    """A prepared dir as ``prepare_dataset`` writes it: one random image (grey, or RGB for
    ``channels=3``) + label map per ``(subject, plane)`` row, ``size`` = (height, width)."""
    rng = np.random.default_rng(seed)
    records = []
    image_shape = size if channels == 1 else (*size, channels)
    for n, (subject, plane) in enumerate(rows):
        stem = f"{subject}_{plane}_{n}"
        image_rel, mask_rel = f"images/{plane}/{stem}.png", f"masks/{plane}/{stem}.png"
        for rel in (image_rel, mask_rel):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, image_shape, dtype=np.uint8)).save(out / image_rel)
        Image.fromarray(rng.integers(0, NUM_CLASSES, size, dtype=np.uint8)).save(out / mask_rel)
        records.append(
            {
                "image": image_rel,
                "mask": mask_rel,
                "plane": plane,
                "subject": subject,
                "pixel_size_mm": "" if n % 2 else 0.1,
                "orig_width": size[1],
                "orig_height": size[0],
            }
        )
    pd.DataFrame(records).to_csv(out / "index.csv", index=False)
    return out


@pytest.fixture
def prepared(tmp_path) -> Path:
    return write_prepared_dir(tmp_path / "prepared", [(f"P{i}", "tt") for i in range(5)])


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.mark.parametrize(
    ("image_size", "image_interpolation"),
    [((20, 24), cv2.INTER_AREA), ((64, 80), cv2.INTER_LINEAR)],
    ids=["shrink-area", "enlarge-linear"],
)
def test_cached_arrays_equal_the_resized_pngs(prepared, image_size, image_interpolation):
    cache_dir = build_cache(prepared, image_size, num_classes=NUM_CLASSES)
    images, masks, ids = open_cache(cache_dir)
    index = pd.read_csv(prepared / "index.csv")
    assert ids == index["image"].tolist()
    assert images.shape == masks.shape == (len(index), *image_size)
    assert images.dtype == masks.dtype == np.uint8
    assert isinstance(images, np.memmap) and images.mode == "r"
    dsize = (image_size[1], image_size[0])
    for row, (image_rel, mask_rel) in enumerate(zip(index["image"], index["mask"], strict=True)):
        expected_image = cv2.resize(
            read_png(prepared / image_rel), dsize, None, 0, 0, image_interpolation
        )
        expected_mask = cv2.resize(
            read_png(prepared / mask_rel), dsize, None, 0, 0, cv2.INTER_NEAREST_EXACT
        )
        np.testing.assert_array_equal(images[row], expected_image)
        np.testing.assert_array_equal(masks[row], expected_mask)


def test_rgb_images_are_cached_channels_last_in_rgb_order(tmp_path, prepared):
    """PIL reads RGB order, as the network must see it (OpenCV alone would give BGR)."""
    rgb = write_prepared_dir(tmp_path / "rgb", [(f"P{i}", "tt") for i in range(3)], channels=3)
    images, masks, ids = open_cache(build_cache(rgb, (20, 24), num_classes=4, in_channels=3))
    assert images.shape == (3, 20, 24, 3) and masks.shape == (3, 20, 24)
    for row, image_rel in enumerate(ids):
        expected = cv2.resize(read_png(rgb / image_rel), (24, 20), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(images[row], expected)
    # One prepared dir read with other channels is another cache; grey keeps its old key.
    assert cache_dir_for(prepared, (20, 24), None, 3) != cache_dir_for(prepared, (20, 24))


def test_a_denoising_filter_on_rgb_images_is_refused(tmp_path):
    rgb = write_prepared_dir(tmp_path / "rgb", [("P0", "tt")], channels=3)
    with pytest.raises(ValueError, match="take grey images; these have 3 channels"):
        build_cache(rgb, (20, 24), num_classes=4, in_channels=3, denoise=Median())


def test_cache_is_built_once_and_rebuilt_for_a_new_resolution(prepared, monkeypatch):
    decoded = []
    real_load = cache.load_resized
    monkeypatch.setattr(
        cache, "load_resized", lambda *a, **k: decoded.append(a[0]) or real_load(*a, **k)
    )
    first = build_cache(prepared, (16, 16), num_classes=NUM_CLASSES)
    assert len(decoded) == 5
    assert first == prepared / "cache" / first.name and first.name.startswith("16x16-")
    mtime = (first / cache.IMAGES_FILE).stat().st_mtime_ns

    assert build_cache(prepared, (16, 16), num_classes=NUM_CLASSES) == first
    assert len(decoded) == 5  # nothing decoded again
    assert (first / cache.IMAGES_FILE).stat().st_mtime_ns == mtime

    second = build_cache(prepared, (24, 16), num_classes=NUM_CLASSES)
    assert second != first and second.name.startswith("24x16-")
    assert len(decoded) == 10
    cached = [p.name for p in (prepared / "cache").iterdir() if not p.name.startswith(".")]
    assert sorted(cached) == sorted([first.name, second.name])  # and their .lock files


def three_class_label_map(height: int, width: int) -> np.ndarray:
    """A head with a CSP-like disc and an LV-like ellipse inside, away from the border."""
    labels = np.zeros((height, width), np.uint8)
    cv2.ellipse(
        labels, (width // 2, height // 2), (width * 3 // 8, height * 3 // 8), 10, 0, 360, 1, -1
    )
    cv2.circle(labels, (width * 2 // 5, height * 2 // 5), height // 8, 2, -1)
    cv2.ellipse(
        labels, (width * 3 // 5, height * 3 // 5), (width // 8, height // 10), 30, 0, 360, 3, -1
    )
    return labels


@pytest.mark.parametrize(
    ("source", "target"),
    [((100, 150), (36, 52)), ((40, 56), (64, 96))],
    ids=["shrink", "enlarge"],
)
def test_resized_labels_keep_their_place_on_the_resized_image(source, target):
    """Each class's centroid in the resized label map is where the resized image puts it.

    Plain nearest neighbour does not align pixel centres (the image resizes do) and moved
    labels by about half a pixel: label noise that horizontal flips cannot let a model learn.
    """
    labels = three_class_label_map(*source)
    resized = resize_mask(labels, target)
    assert resized.shape == target and set(np.unique(resized)) == {0, 1, 2, 3}
    for label in (1, 2, 3):
        drawn = resize_image(np.where(labels == label, 255, 0).astype(np.uint8), target)
        expected = ndimage.center_of_mass(drawn.astype(np.float64))
        np.testing.assert_allclose(
            ndimage.center_of_mass(resized == label), expected, atol=0.2, err_msg=f"label {label}"
        )


def test_a_changed_index_gets_a_new_cache(prepared):
    before = cache_dir_for(prepared, (16, 16))
    index = pd.read_csv(prepared / "index.csv")
    index.iloc[:3].to_csv(prepared / "index.csv", index=False)
    after = build_cache(prepared, (16, 16), num_classes=NUM_CLASSES)
    assert after != before
    assert len(open_cache(after)[2]) == 3


def test_a_label_out_of_range_is_named(prepared):
    mask_rel = pd.read_csv(prepared / "index.csv")["mask"].iat[2]
    Image.fromarray(np.full((40, 48), 7, np.uint8)).save(prepared / mask_rel)
    with pytest.raises(ValueError, match=rf"{mask_rel}.*label 7.*0\.\.3"):
        build_cache(prepared, (16, 16), num_classes=NUM_CLASSES)
    assert not (prepared / "cache" / cache_dir_for(prepared, (16, 16)).name).exists()


def test_a_mask_of_another_size_is_named(prepared):
    mask_rel = pd.read_csv(prepared / "index.csv")["mask"].iat[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(prepared / mask_rel)
    with pytest.raises(ValueError, match=rf"{mask_rel} is 10x10 but image .* is 48x40"):
        build_cache(prepared, (16, 16), num_classes=NUM_CLASSES)


def test_a_missing_or_incomplete_index_is_named(tmp_path, prepared):
    with pytest.raises(FileNotFoundError, match="index.csv not found"):
        build_cache(tmp_path / "nowhere", (16, 16), num_classes=NUM_CLASSES)
    pd.read_csv(prepared / "index.csv").drop(columns="subject").to_csv(
        prepared / "index.csv", index=False
    )
    with pytest.raises(ValueError, match=r"index.csv lacks columns \['subject'\]"):
        build_cache(prepared, (16, 16), num_classes=NUM_CLASSES)


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def fail(out: Path) -> None:
        out.mkdir()
        (out / "half.npy").write_bytes(b"x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        build_dir_atomically(tmp_path / "target", fail)
    assert list(tmp_path.iterdir()) == []


def test_an_existing_target_built_concurrently_is_kept(tmp_path):
    target = tmp_path / "target"

    def build_while_another_process_finishes_first(out: Path) -> None:
        target.mkdir()
        (target / "theirs").write_text("kept")
        out.mkdir()
        (out / "ours").write_text("discarded")

    assert build_dir_atomically(target, build_while_another_process_finishes_first) == target
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == ["target"]


def test_a_killed_builds_staging_folder_is_removed_by_the_next_prepare(
    phantom_raw, tmp_path, caplog
):
    """A prepare killed midway leaves ``.<name>.partial-*``; the next prepare of that folder
    removes it and says so. Folders of a live process or without an owner are left alone."""
    out = tmp_path / "prepared"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, sys; from pathlib import Path; from src.data.prepared import staging_dir;"
            "s = staging_dir(Path(sys.argv[1]), 'partial'); (s / 'half.png').write_bytes(b'x');"
            "print(s); os._exit(9)",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    left = Path(killed.stdout.strip())
    assert killed.returncode == 9 and left.is_dir()
    live = staging_dir(out, "partial")  # this process: still running
    unknown = tmp_path / f".{out.name}.partial-manual"
    unknown.mkdir()
    with caplog.at_level("WARNING"):
        prepare_dataset(phantom_raw, out)
    assert not left.exists()
    assert f"removed {left}" in caplog.text
    assert live.is_dir() and unknown.is_dir()
    assert (out / "index.csv").is_file() and not (out / STAGING_OWNER).exists()
