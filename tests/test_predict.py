"""src.predict on a folder of images: a 1x1-convolution "model" that labels bright pixels as
brain, so the predicted head is the ellipse drawn into each image and its HC is known."""

import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from src import predict as predict_module
from src.data.classes import FETAL_HEAD
from src.ellipse import ramanujan_circumference
from src.inference.checkpoint import checkpoint_payload
from src.predict import BIOMETRY_CSV, SKIPPED_CSV, predict

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 96)  # height, width of the test images
AXES = (36, 22)  # semi-axes in pixels of the bright head drawn into each image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A sonoseg checkpoint of a Conv2d(1, 4, 1): brain where the image is brighter than
    0.5, background elsewhere, CSP and LV never."""
    config = {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 1}
    weight = torch.zeros(4, 1, 1, 1)
    weight[1] = 20.0
    bias = torch.tensor([0.0, -10.0, -100.0, -100.0])
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    torch.save(
        {
            "state_dict": {"net.weight": weight, "net.bias": bias},
            "sonoseg": checkpoint_payload(config, FETAL_HEAD.names, (32, 48), 1),
        },
        path,
    )
    return path


def _scan(angle: float = 0.0) -> np.ndarray:
    image = np.full(SIZE, 30, dtype=np.uint8)
    cv2.ellipse(image, (48, 32), AXES, angle, 0, 360, 220, -1)
    return image


@pytest.fixture
def images(tmp_path):
    """Two scans (PNG, JPEG), a corrupt PNG and a text file."""
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _scan())
    cv2.imwrite(str(folder / "b.jpg"), cv2.cvtColor(_scan(30), cv2.COLOR_GRAY2BGR))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_with_bad_files(ckpt, images, tmp_path, caplog):
    out = tmp_path / "out"
    report = predict(ckpt, images, out, pixel_size_mm=0.5)

    assert sorted(report.skipped) == [str(images / "broken.png"), str(images / "notes.txt")]
    logged = caplog.text
    assert "broken.png: cannot be decoded" in logged and "notes.txt: not an image file" in logged
    skipped = pd.read_csv(out / SKIPPED_CSV)
    assert list(skipped["file"]) == [str(images / "broken.png"), str(images / "notes.txt")]

    rows = pd.read_csv(out / BIOMETRY_CSV)
    assert list(rows["image"]) == [str(images / "a.png"), str(images / "b.jpg")]
    for name in ("a", "b"):
        mask = cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == SIZE and mask.dtype == np.uint8  # the original resolution
        assert set(np.unique(mask)) == {0, 1}
        overlay = cv2.imread(str(out / "overlays" / f"{name}.png"))
        assert overlay.shape == (*SIZE, 3)
    expected_hc = 0.5 * ramanujan_circumference(*AXES)
    assert (rows["units"] == "mm").all() and rows["head_found"].all()
    np.testing.assert_allclose(rows["hc"], expected_hc, rtol=0.03)
    assert math.isclose(rows["angle_rad"][1], math.radians(30), abs_tol=0.05)
    assert {"quality_score", "flagged", "unsupported_fraction", "csp_width"} <= set(rows.columns)
    assert "check" not in rows.columns
    assert rows["csp_width"].isna().all()  # this model never predicts CSP


def test_single_file_in_pixels(ckpt, images, tmp_path):
    report = predict(ckpt, images / "a.png", tmp_path / "out")
    rows = pd.read_csv(tmp_path / "out" / BIOMETRY_CSV)
    assert len(report.rows) == 1 and (rows["units"] == "px").all()
    np.testing.assert_allclose(rows["hc"], ramanujan_circumference(*AXES), rtol=0.03)
    assert not (tmp_path / "out" / SKIPPED_CSV).exists()


def test_empty_folder_and_nothing_readable(ckpt, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"input folder {empty} holds no files"):
        predict(ckpt, empty, tmp_path / "out")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"garbage")
    (bad / "y.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="no image could be processed") as error:
        predict(ckpt, bad, tmp_path / "out")
    assert "x.png" in str(error.value) and "y.csv" in str(error.value)
    assert not (tmp_path / "out").exists()
    assert {p.name for p in tmp_path.iterdir()} == {"empty", "bad"}  # no staging left


def test_out_dir_is_never_overwritten_without_overwrite(ckpt, images, tmp_path):
    out = tmp_path / "out"
    predict(ckpt, images / "a.png", out)
    before = (out / BIOMETRY_CSV).read_text()
    with pytest.raises(FileExistsError, match="overwrite=true"):
        predict(ckpt, images / "b.jpg", out)
    assert (out / BIOMETRY_CSV).read_text() == before
    predict(ckpt, images / "b.jpg", out, overwrite=True)  # an earlier prediction folder
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["b.png"]

    other = tmp_path / "results"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an earlier prediction folder"):
        predict(ckpt, images / "a.png", other, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def _compose(*overrides: str):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("predict", overrides=list(overrides))


def test_config_and_entry_point(ckpt, images, tmp_path):
    """conf/predict.yaml and main's body (Hydra's decorator unwrapped), [row, col] pixels."""
    cfg = _compose(
        f"ckpt_path={ckpt}",
        f"input={images}",
        f"out_dir={tmp_path / 'out'}",
        "pixel_size_mm=[0.5,0.5]",
    )
    predict_module.main.__wrapped__(cfg)
    rows = pd.read_csv(tmp_path / "out" / BIOMETRY_CSV)
    assert len(rows) == 2 and (rows["units"] == "mm").all()
    with pytest.raises(ValueError, match="no image could be processed"):
        predict_module.main.__wrapped__(
            _compose(f"ckpt_path={ckpt}", f"input={images}/notes.txt", f"out_dir={tmp_path / 'o'}")
        )


@pytest.mark.slow
def test_cli_exit_status(ckpt, images, tmp_path):
    """Exit 0 when some images were processed, non-zero only when none could be."""

    def run(input_path, out_dir) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "src.predict", f"ckpt_path={ckpt}"]
        cmd += [f"input={input_path}", f"out_dir={out_dir}"]
        env = {**os.environ, "PROJECT_ROOT": str(ROOT)}
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    done = run(images, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "broken.png" in done.stdout + done.stderr
    failed = run(images / "notes.txt", tmp_path / "out2")
    assert failed.returncode != 0
    assert "notes.txt: not a PNG/JPEG file" in failed.stderr


@pytest.mark.parametrize("in_channels", [1, 3])
def test_tiff_inputs_read_as_their_png_twins(tmp_path, in_channels):
    # LGG slices come as RGB .tif: predict reads them as it reads a PNG of the same pixels.
    # (Grey from a colour file is each codec's own conversion: libtiff's and libpng's rounding
    # differ by up to one grey level.)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    for suffix in (".tif", ".png"):
        cv2.imwrite(str(tmp_path / f"slice{suffix}"), pixels)
    tiff = predict_module.read_image(tmp_path / "slice.tif", in_channels)
    png = predict_module.read_image(tmp_path / "slice.png", in_channels)
    assert tiff.shape == png.shape == ((12, 10) if in_channels == 1 else (12, 10, 3))
    assert np.abs(tiff.astype(int) - png).max() <= (1 if in_channels == 1 else 0)


def test_the_submission_has_a_row_per_scan_and_draws_back_as_the_predicted_head(
    ckpt, tmp_path, caplog
):
    """Every image file gets a row (a scan without a head and an unreadable one: empty
    cells, counted in the log); drawing a row in the documented frame (x = column, y = row,
    angle clockwise from +x, a along it: src.data.readers.hc18.write_submission) onto the
    scan reproduces the predicted head mask. Scans of HC18's scale (semi-axes of 100+ px)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for name, angle in (("a.png", 0), ("b.png", 30), ("c.png", None)):
        scan = np.full((400, 600), 30, dtype=np.uint8)
        if angle is not None:
            cv2.ellipse(scan, (310, 190), (180, 110), angle, 0, 360, 220, -1)
        cv2.imwrite(str(folder / name), scan)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    pixel_mm = 0.2
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        predict(ckpt, folder, out, pixel_size_mm=pixel_mm)
    submission = pd.read_csv(out / "hc18_submission.csv").set_index("filename")
    assert list(submission.index) == ["a.png", "b.png", "broken.png", "c.png"]  # no notes.txt
    assert submission.loc[["broken.png", "c.png"]].isna().all().all()
    assert "4 rows, 2 empty: 1 without a head found, 1 skipped" in caplog.text
    for name in ("a.png", "b.png"):
        row = submission.loc[name]
        drawn = np.zeros((400, 600), dtype=np.uint8)
        sub = 16  # cv2.ellipse's fixed point (shift=4): sub-pixel centre and axes
        cv2.ellipse(
            drawn,
            (round(sub * row.center_x_mm / pixel_mm), round(sub * row.center_y_mm / pixel_mm)),
            (
                round(sub * row.semi_axes_a_mm / pixel_mm),
                round(sub * row.semi_axes_b_mm / pixel_mm),
            ),
            math.degrees(row.angle_rad),
            0,
            360,
            1,
            -1,
            shift=4,
        )
        predicted = cv2.imread(str(out / "masks" / f"{Path(name).stem}.png"), 0) > 0
        dice = 2 * (predicted & (drawn > 0)).sum() / (predicted.sum() + (drawn > 0).sum())
        assert dice >= 0.99, name
        assert row.semi_axes_a_mm >= row.semi_axes_b_mm
    # The other reading some public scripts use (x from the row) does not draw it back.
    row = submission.loc["b.png"]
    swapped = np.zeros((400, 600), dtype=np.uint8)
    centre = (round(row.center_y_mm / pixel_mm), round(row.center_x_mm / pixel_mm))
    axes = (round(row.semi_axes_a_mm / pixel_mm), round(row.semi_axes_b_mm / pixel_mm))
    cv2.ellipse(swapped, centre, axes, math.degrees(row.angle_rad), 0, 360, 1, -1)
    predicted = cv2.imread(str(out / "masks" / "b.png"), 0) > 0
    assert 2 * (predicted & (swapped > 0)).sum() / (predicted.sum() + swapped.sum()) < 0.9
