"""Biometry against exact ellipses (the phantom's rasteriser and record), real HC18
annotations with the sonographer's HC, anisotropic pixels, cut-off heads, hand-built CSP /
LV masks, and the evaluation helpers."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.biometry import measure_biometry, measure_head, structure_width
from src.data.classes import FETAL_HEAD
from src.ellipse import ramanujan_circumference
from src.evaluation.agreement import (
    DifferenceStats,
    difference_stats,
    ellipse_differences,
    write_bland_altman,
)
from src.synthetic.phantom import ellipse_mask
from src.synthetic.record import TRUTH_DIR

HC18 = Path(__file__).resolve().parent / "fixtures" / "hc18"
HEAD = FETAL_HEAD.head_labels
BRAIN, CSP, LV = (FETAL_HEAD.label(name) for name in ("brain", "csp", "lv"))


def head_mask(cx, cy, a, b, angle_deg, shape=(64, 96)) -> np.ndarray:
    """A brain-labelled head: the pixels whose centre lies in the ellipse (the phantom's
    own exact rasteriser)."""
    return ellipse_mask(*shape, cx, cy, a, b, angle_deg).astype(np.uint8) * BRAIN


def axis_difference_deg(a_rad: float, b_deg: float) -> float:
    return abs((math.degrees(a_rad) - b_deg + 90) % 180 - 90)


def covers(runs, direction_deg: float) -> bool:
    """Whether one of the (start, end) sector runs (wrapping through 0) holds a direction."""
    d = direction_deg % 360
    return any(start <= d < end if start < end else d >= start or d < end for start, end in runs)


def test_ramanujan_is_exact_for_a_circle_and_close_for_a_segment():
    assert ramanujan_circumference(10, 10) == pytest.approx(2 * math.pi * 10, rel=1e-12)
    assert ramanujan_circumference(1, 0) == pytest.approx(4, rel=1e-3)  # the flat limit


@pytest.mark.parametrize(
    ("a", "ratio", "angle_deg"),
    [(14, 0.95, 0), (20, 0.8, 25), (27, 0.72, -35), (30, 0.6, 80), (22, 0.85, 135)],
)
def test_exact_ellipses_give_hc_bpd_ofd_within_one_percent(a, ratio, angle_deg):
    b = a * ratio
    head = measure_head(head_mask(47.3, 31.6, a, b, angle_deg), HEAD)
    assert head.units == "px"
    assert head.hc == pytest.approx(ramanujan_circumference(a, b), rel=0.01)
    assert head.ofd == pytest.approx(2 * a, rel=0.01)
    assert head.bpd == pytest.approx(2 * b, rel=0.01)
    assert (head.center_x, head.center_y) == pytest.approx((47.3, 31.6), abs=0.2)
    if ratio < 0.9:  # a near-circle has no sensible axis direction
        assert axis_difference_deg(head.angle_rad, angle_deg) < 3
    assert 0 <= head.angle_rad < math.pi
    assert not head.check
    assert head.unsupported_sectors == ()


def test_holes_fragments_and_inner_labels_do_not_move_the_ellipse():
    clean = head_mask(45.2, 30.7, 24, 19, 20)
    messy = clean.copy()
    messy[25:29, 40:44] = 0  # a hole in the brain
    messy[33:37, 48:56] = CSP  # CSP and LV are head too
    messy[22:26, 36:41] = LV
    messy[1:4, 1:6] = BRAIN  # a fragment outside the head
    messy[60:63, 90:94] = CSP
    expected, measured = measure_head(clean, HEAD), measure_head(messy, HEAD)
    assert measured == expected


def test_phantom_record_heads_within_one_percent(phantom_raw):
    truth = phantom_raw / TRUTH_DIR
    with (truth / "heads.csv").open() as f:
        heads = list(csv.DictReader(f))
    assert heads
    for row in heads:
        labels = np.asarray(Image.open(truth / "labels" / f"{row['stem']}.png"))
        size = float(row["pixel_size_mm"])
        a, b = float(row["semi_major"]) * size, float(row["semi_minor"]) * size
        head = measure_head(labels, HEAD, size)
        assert head.units == "mm", row["stem"]
        assert head.hc == pytest.approx(ramanujan_circumference(a, b), rel=0.01), row["stem"]
        assert head.ofd == pytest.approx(2 * a, rel=0.01), row["stem"]
        assert head.bpd == pytest.approx(2 * b, rel=0.01), row["stem"]
        assert head.center_x == pytest.approx(float(row["cx"]) * size, abs=0.3 * size)
        assert not head.check, row["stem"]


def test_anisotropic_pixels_are_measured_in_mm_space():
    """An ellipse in mm rasterised on pixels 0.3 mm tall and 0.2 mm wide (a non-uniform
    resize): only the (row, col) pixel size recovers its HC."""
    size_y, size_x = 0.3, 0.2
    a, b, angle = 6.0, 4.5, math.radians(30)  # mm
    rows, cols = np.indices((64, 96))
    x, y = cols * size_x - 9.6, rows * size_y - 9.3
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    mask = ((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.uint8)
    head = measure_head(mask, (1,), (size_y, size_x))
    assert head.hc == pytest.approx(ramanujan_circumference(a, b), rel=0.01)
    assert (head.ofd, head.bpd) == pytest.approx((2 * a, 2 * b), rel=0.01)
    assert axis_difference_deg(head.angle_rad, 30) < 3
    assert head.hc18_row()["center_x_mm"] == pytest.approx(9.6, abs=0.1)
    swapped = measure_head(mask, (1,), (size_x, size_y))
    assert abs(swapped.hc / head.hc - 1) > 0.05


def test_no_head_is_none_and_bad_input_is_named():
    empty = np.zeros((64, 64), np.uint8)
    assert measure_head(empty, HEAD) is None
    assert measure_biometry(empty) is None
    only_other = np.full((64, 64), 7, np.uint8)
    assert measure_head(only_other, HEAD) is None
    with pytest.raises(ValueError, match="mask must be a 2-D"):
        measure_head(np.zeros((2, 64, 64), np.uint8), HEAD)
    with pytest.raises(ValueError, match="pixel_size_mm"):
        measure_head(head_mask(45, 30, 20, 16, 0), HEAD, -0.1)
    with pytest.raises(ValueError, match="pixel_size_mm"):
        measure_head(head_mask(45, 30, 20, 16, 0), HEAD, (0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="head_labels"):
        measure_head(head_mask(45, 30, 20, 16, 0), ())


@pytest.mark.parametrize(("side", "direction_deg"), [("right", 0), ("left", 180)])
def test_a_cut_off_side_is_flagged_and_located(side, direction_deg):
    """A flat side, as a shadowed skull leaves it, at about 18% of the semi-major axis."""
    a, b = 26, 21
    clean = head_mask(48.2, 32.3, a, b, 15)
    cut = clean.copy()
    if side == "right":
        cut[:, 70:] = 0
    else:
        cut[:, :27] = 0
    assert not measure_head(clean, HEAD).check
    plain = measure_head(cut, HEAD)
    assert plain.check and plain.unsupported_fraction > 0
    assert covers(plain.unsupported_sectors, direction_deg)
    robust = measure_head(cut, HEAD, robust=True)
    truth = ramanujan_circumference(a, b)
    assert abs(robust.hc - truth) < abs(plain.hc - truth) / 2
    assert robust.check  # the trimmed side is still reported, and nothing else
    assert covers(robust.unsupported_sectors, direction_deg)
    assert not covers(robust.unsupported_sectors, direction_deg + 180)


def test_the_image_edge_is_not_taken_for_skull():
    """A head running out of the image: the frame's points are left out of the fit, so the
    visible arc alone gives the ellipse, and the missing part is flagged."""
    a, b = 30, 24
    head = measure_head(head_mask(20.4, 32.2, a, b, 10), HEAD)
    assert head.hc == pytest.approx(ramanujan_circumference(a, b), rel=0.01)
    assert head.check
    assert covers(head.unsupported_sectors, 180)


def test_csp_width_is_measured_across_the_midline():
    mask = head_mask(48, 32, 28, 22, 0)
    mask[29:35, 26:40] = CSP  # 6 rows across the (horizontal) midline, 14 along it
    biometry = measure_biometry(mask)
    assert biometry.csp_width == pytest.approx(6)
    assert biometry.lv_width is None
    assert measure_biometry(mask, (0.25, 0.5)).csp_width == pytest.approx(1.5)  # 6 x 0.25 mm


def test_csp_width_follows_a_tilted_head():
    angle = 30
    mask = head_mask(48, 32, 28, 22, angle)
    rows, cols = np.indices(mask.shape)
    t = math.radians(angle)
    u = (cols - 40) * math.cos(t) + (rows - 28) * math.sin(t)
    v = -(cols - 40) * math.sin(t) + (rows - 28) * math.cos(t)
    mask[(np.abs(u) <= 8) & (np.abs(v) <= 3.5)] = CSP  # 7 px across the tilted midline
    assert measure_biometry(mask).csp_width == pytest.approx(7, abs=1)


def test_lv_width_is_across_its_own_long_axis():
    mask = head_mask(48, 32, 28, 22, 0)
    lv = ellipse_mask(64, 96, 55.3, 38.2, 12, 4, -40)  # 8 px wide, tilted against the head
    mask[lv] = LV
    assert measure_biometry(mask).lv_width == pytest.approx(8, abs=1)
    assert structure_width(mask, LV, 0.5) == pytest.approx(4, abs=0.5)


def test_other_class_sets_pass_their_own_label_ids():
    mask = head_mask(48, 32, 24, 20, 10) * 5  # head labelled 5, no CSP / LV classes
    assert measure_biometry(mask) is None  # the default fetal head labels find nothing
    biometry = measure_biometry(mask, head_labels=(5,), csp_label=None, lv_label=None)
    assert biometry.head.hc == pytest.approx(ramanujan_circumference(24, 20), rel=0.01)
    row = biometry.as_row()
    assert row["units"] == "px" and row["csp_width"] is None
    assert row["unsupported_sectors"] == ""


def test_difference_stats_against_hand_values():
    stats = difference_stats([100, 200, 300, 400], [101, 198, 303, 400])
    # differences 1, -2, 3, 0: mean 0.5, SD sqrt(13/3), median 0.5, |d| 1, 2, 3, 0
    assert stats == DifferenceStats(
        n=4,
        mean=0.5,
        std=pytest.approx(math.sqrt(13 / 3)),
        median=0.5,
        mean_abs=1.5,
        median_abs=1.5,
        max_abs=3.0,
    )
    with pytest.raises(ValueError, match="equal length"):
        difference_stats([1, 2], [1])
    with pytest.raises(ValueError, match="finite"):
        difference_stats([1, 2], [1, math.nan])


def test_ellipse_differences_wrap_the_axis_angle():
    truth = measure_head(head_mask(48, 32, 26, 19, 179), HEAD)
    predicted = measure_head(head_mask(49, 32, 27, 19, 1), HEAD)
    differences = ellipse_differences(truth, predicted)
    assert math.degrees(differences["angle_rad"]) == pytest.approx(2, abs=1.5)
    assert differences["centre"] == pytest.approx(1, abs=0.3)
    assert differences["ofd"] == pytest.approx(2, abs=0.3)
    with pytest.raises(ValueError, match="units"):
        ellipse_differences(truth, measure_head(head_mask(48, 32, 26, 19, 1), HEAD, 0.1))


def test_bland_altman_png_is_written_and_never_overwritten(tmp_path):
    truth, predicted = [150.0, 170.0, 180.0, 300.0], [151.5, 168.0, 183.0, 301.0]
    path = write_bland_altman(truth, predicted, tmp_path / "plots" / "hc_bland_altman.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 450)
    written = path.read_bytes()
    with pytest.raises(FileExistsError, match="hc_bland_altman.png"):
        write_bland_altman(truth, predicted, path)
    assert path.read_bytes() == written
    write_bland_altman(truth, predicted[::-1], path, overwrite=True)
    assert path.read_bytes() != written
    assert sorted(p.name for p in path.parent.iterdir()) == ["hc_bland_altman.png"]
    with pytest.raises(ValueError, match="two pairs"):
        write_bland_altman([1.0], [2.0], tmp_path / "one.png")


@pytest.mark.slow
def test_robust_fit_and_check_calibration():
    """The figures in src.biometry's docstring (``pytest -m slow -s`` prints them): HC
    error of the plain and robust fits, and how often ``check`` is set, over 40 phantom
    ellipses (240 x 320 px, semi-major 50-100 px) per defect: a ragged edge (radial wobble,
    RMS share of the radius), a side cut off (depth share of the radius), an outward leak
    (disc on the edge, radius share of the semi-major axis)."""
    rng = np.random.default_rng(11)
    rows, cols = np.indices((240, 320))
    results = {}
    for kind, size in [
        *[("clean", 0), ("wobble", 0.01), ("wobble", 0.02)],
        *[("cut", 0.05), ("cut", 0.1), ("cut", 0.2), ("leak", 0.1), ("leak", 0.2)],
    ]:
        for _ in range(40):
            a = rng.uniform(50, 100)
            b, t = a * rng.uniform(0.72, 0.9), math.radians(rng.uniform(-35, 35))
            dx, dy = cols - 160 - rng.uniform(-5, 5), rows - 120 - rng.uniform(-5, 5)
            u, v = dx * math.cos(t) + dy * math.sin(t), -dx * math.sin(t) + dy * math.cos(t)
            edge = np.ones_like(u)
            if kind == "wobble":
                phase = np.arctan2(v / b, u / a)
                for k in range(2, 12):
                    amplitude = rng.normal(0, size / math.sqrt(10))
                    edge += amplitude * np.cos(k * phase + rng.uniform(0, 2 * math.pi))
            mask = np.hypot(u / a, v / b) <= edge
            p = rng.uniform(0, 2 * math.pi)  # where the defect is, in the head's frame
            if kind == "cut":
                mask &= u * math.cos(p) + v * math.sin(p) < (1 - size) * math.hypot(
                    a * math.cos(p), b * math.sin(p)
                )
            if kind == "leak":
                mask |= np.hypot(u - a * math.cos(p), v - b * math.sin(p)) < size * a
            for robust in (False, True):
                head = measure_head(mask.astype(np.uint8), (1,), robust=robust)
                error = 100 * (head.hc / ramanujan_circumference(a, b) - 1)
                results.setdefault((kind, size, robust), []).append((error, head.check))
    summary = {}
    for (kind, size, robust), values in results.items():
        errors, checks = np.array(values).T
        summary[kind, size, robust] = (errors.mean(), np.abs(errors).max(), checks.mean())
        print(
            f"{kind:6s} {size:4.2f} {'robust' if robust else 'plain ':6s} HC error mean "
            f"{errors.mean():+.2f}% max |.| {np.abs(errors).max():.2f}%, check {checks.mean():.2f}"
        )
    for robust in (False, True):
        assert summary["clean", 0, robust][1] < 0.1 and summary["clean", 0, robust][2] == 0
        assert summary["wobble", 0.01, robust][2] == 0
        assert summary["cut", 0.1, robust][2] == 1 and summary["leak", 0.2, robust][2] == 1
    for case in [("cut", 0.1), ("cut", 0.2), ("leak", 0.1), ("leak", 0.2)]:
        plain, robust = summary[(*case, False)], summary[(*case, True)]
        assert abs(robust[0]) < abs(plain[0]) / 3, case
