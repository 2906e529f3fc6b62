"""The B-mode phantom: exact labels, CSP / LV by the flags, determinism, B-mode statistics."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from src.synthetic.phantom import HeadEllipse, ellipse_mask, render_scan, speckle_envelope

SMALL = (160, 108)  # width, height: the real 959 x 661 aspect, fast to render


def render(seed: int, size=SMALL, *, has_csp=True, has_lv=True, pixel_size_mm=None):
    width, height = size
    # Pixel size scaled so that the head keeps a real size in millimetres.
    pixel_size_mm = pixel_size_mm or 0.15 * 959 / width
    return render_scan(
        np.random.default_rng(seed),
        width,
        height,
        has_csp=has_csp,
        has_lv=has_lv,
        pixel_size_mm=pixel_size_mm,
    )


def head_mask(head: HeadEllipse, shape) -> np.ndarray:
    h, w = shape
    return ellipse_mask(h, w, head.cx, head.cy, head.semi_major, head.semi_minor, head.angle_deg)


def head_circumference_mm(head: HeadEllipse) -> float:
    a, b = head.semi_major, head.semi_minor
    h = (a - b) ** 2 / (a + b) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h))) * head.pixel_size_mm


def test_ellipse_mask_hand_computed():
    # Semi-axes 2 (along x) and 1 around pixel (2, 2): the middle row holds x = 0..4, the
    # rows above and below only the centre column (dx = 0 gives exactly 1 at dy = +-1).
    expected = np.zeros((5, 5), bool)
    expected[2, :] = True
    expected[1, 2] = expected[3, 2] = True
    np.testing.assert_array_equal(ellipse_mask(5, 5, 2, 2, 2, 1, 0), expected)
    np.testing.assert_array_equal(ellipse_mask(5, 5, 2, 2, 2, 1, 90), expected.T)


def test_same_seed_same_scan_other_seed_other_scan():
    first, again, other = render(7), render(7), render(8)
    np.testing.assert_array_equal(first.image, again.image)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.head == again.head
    assert first.head != other.head
    assert not np.array_equal(first.image, other.image)


def test_image_and_labels_dtype_and_shape():
    scan = render(0, size=(96, 64))
    assert scan.image.dtype == np.uint8 and scan.image.shape == (64, 96)
    assert scan.labels.dtype == np.uint8 and scan.labels.shape == (64, 96)
    assert set(np.unique(scan.labels)) <= {0, 1, 2, 3}


@pytest.mark.parametrize("seed", range(6))
def test_head_union_is_exactly_the_generating_ellipse(seed):
    scan = render(seed, has_csp=seed % 2 == 0, has_lv=seed % 3 != 0)
    np.testing.assert_array_equal(scan.labels > 0, head_mask(scan.head, scan.labels.shape))


@pytest.mark.parametrize(
    "has_csp, has_lv", [(False, False), (True, False), (False, True), (True, True)]
)
def test_csp_and_lv_present_iff_asked_for(has_csp, has_lv):
    for seed in range(3):
        labels = render(seed, has_csp=has_csp, has_lv=has_lv).labels
        assert (labels == 2).any() == has_csp
        assert (labels == 3).any() == has_lv
        assert (labels == 1).any()


@pytest.mark.parametrize("seed", range(4))
def test_csp_and_lv_inside_the_head_with_realistic_sizes_and_places(seed):
    scan = render(seed, size=(480, 330))
    head, labels = scan.head, scan.labels
    inside = head_mask(head, labels.shape)
    assert inside[labels == 2].all() and inside[labels == 3].all()
    # Areas relative to the head (pi a b), from the drawn ranges: CSP a box (superellipse
    # of power 4, area 3.708 a b) of half length 0.10-0.16 a, half width 0.05-0.09 b;
    # LV an ellipse of half length 0.18-0.28 a, half width 0.07-0.11 b.
    head_area = math.pi * head.semi_major * head.semi_minor
    assert 0.004 < (labels == 2).sum() / head_area < 0.02
    assert 0.01 < (labels == 3).sum() / head_area < 0.035
    # CSP on the midline, LV off it, both off the centre along it.
    t = math.radians(head.angle_deg)
    for label, across_range in ((2, (0.0, 0.05)), (3, (0.2, 0.5))):
        ys, xs = np.nonzero(labels == label)
        along = (xs.mean() - head.cx) * math.cos(t) + (ys.mean() - head.cy) * math.sin(t)
        across = -(xs.mean() - head.cx) * math.sin(t) + (ys.mean() - head.cy) * math.cos(t)
        assert across_range[0] <= abs(across) / head.semi_minor <= across_range[1]
        assert 0.15 <= abs(along) / head.semi_major <= 0.5


@pytest.mark.parametrize("pixel_size_mm", [0.07, 0.15, 0.25, 0.33])
def test_head_size_realistic_and_inside_the_image(pixel_size_mm):
    width, height = 959, 661
    for seed in range(2):
        scan = render(seed, size=(width, height), pixel_size_mm=pixel_size_mm)
        ys, xs = np.nonzero(scan.labels)
        assert xs.min() > 0 and ys.min() > 0 and xs.max() < width - 1 and ys.max() < height - 1
        assert 0.35 <= (xs.max() - xs.min()) / width <= 0.92
        if pixel_size_mm >= 0.15:  # large enough for any head of 100-340 mm to fit the image
            assert 100 <= head_circumference_mm(scan.head) <= 340


def test_speckle_envelope_is_rayleigh():
    """Fully developed speckle: Rayleigh envelope, mean/std = sqrt(pi / (4 - pi)) = 1.913,
    mean power = the diffuse power, whatever the point-spread function."""
    power = np.full((256, 256), 4.0, np.float32)
    envelope = speckle_envelope(np.random.default_rng(0), power, axial_sigma=1.0, lateral_sigma=2.5)
    assert envelope.mean() / envelope.std() == pytest.approx(
        math.sqrt(math.pi / (4 - math.pi)), abs=0.06
    )
    assert (envelope**2).mean() == pytest.approx(4.0, rel=0.05)


def test_image_statistics_in_the_calibrated_range():
    """Ranges around the real HC18 figures (experiments/phantom_calibration): black padding
    outside the fan, a grey tissue level, a skull ring far brighter than the brain."""
    for seed in range(4):
        scan = render(seed, size=(400, 270), pixel_size_mm=0.3)
        image, head = scan.image.astype(float), scan.head
        shrunk = replace(head, semi_major=head.semi_major - 6, semi_minor=head.semi_minor - 6)
        skull_band = (scan.labels > 0) & ~head_mask(shrunk, image.shape)
        interior = head_mask(
            replace(head, semi_major=0.8 * head.semi_major, semi_minor=0.8 * head.semi_minor),
            image.shape,
        )
        assert 0.03 <= (image == 0).mean() <= 0.65
        assert 15 <= image[image > 0].mean() <= 90
        assert np.percentile(image[skull_band], 95) >= np.median(image[interior]) + 60


@pytest.mark.parametrize(
    "kwargs, message",
    [({"pixel_size_mm": 0.0}, "pixel_size_mm"), ({"pixel_size_mm": 0.1, "width": 8}, "16 x 16")],
)
def test_bad_input_is_refused_with_a_clear_message(kwargs, message):
    args = {"width": 64, "height": 64, "has_csp": True, "has_lv": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        render_scan(np.random.default_rng(0), **args)
