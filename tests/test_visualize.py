import cv2
import numpy as np
import pytest

from src.biometry import measure_biometry
from src.data.classes import FETAL_HEAD
from src.visualize import (
    ELLIPSE_COLOUR,
    UNSUPPORTED_COLOUR,
    biometry_overlay,
    class_colours,
    comparison_row,
    draw_head_ellipse,
    draw_legend,
    grid,
    overlay_labels,
)


def _head_labels(shape=(64, 96)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    cv2.ellipse(labels, (48, 32), (30, 20), 15, 0, 360, 1, -1)
    labels[30:35, 45:52] = 2
    return labels


def test_overlay_colours_only_the_labelled_pixels():
    image = np.full((64, 96), 100, dtype=np.uint8)
    labels = _head_labels()
    out = overlay_labels(image, labels, FETAL_HEAD.display_colours, alpha=0.5)
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[labels == 0], 100)  # background untouched
    expected = np.rint(0.5 * 100 + 0.5 * np.array(FETAL_HEAD.display_colours[2]))
    np.testing.assert_array_equal(out[labels == 2], np.broadcast_to(expected, (35, 3)))
    untouched = overlay_labels(image, labels, FETAL_HEAD.display_colours, alpha=0.0)
    np.testing.assert_array_equal(untouched, np.repeat(image[..., None], 3, axis=2))


def test_overlay_rejects_a_mismatched_mask_and_an_unknown_label():
    image = np.zeros((64, 96), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape"):
        overlay_labels(image, np.zeros((64, 95), np.uint8), FETAL_HEAD.display_colours)
    with pytest.raises(ValueError, match="label 7 has no colour"):
        overlay_labels(image, np.full((64, 96), 7, np.uint8), FETAL_HEAD.display_colours)


def test_class_colours_from_the_registry_or_distinct_for_another_class_set():
    assert class_colours(["Background", "Brain", "CSP", "LV"]) == FETAL_HEAD.display_colours
    other = class_colours(["background", "liver", "kidney", "spleen", "stomach"])
    assert len(other) == 5 and other[0] == (0, 0, 0)
    assert len(set(other)) == 5


def test_legend_draws_each_class_colour():
    rgb = np.full((200, 300, 3), 128, dtype=np.uint8)
    draw_legend(rgb, FETAL_HEAD.names, FETAL_HEAD.display_colours)
    corner = rgb[:80, :80].reshape(-1, 3)
    for colour in FETAL_HEAD.display_colours[1:]:
        assert (corner == colour).all(axis=1).any(), colour
    assert (rgb[150:, 200:] == 128).all()  # nothing outside the legend


def test_head_ellipse_follows_the_measurement_also_with_anisotropic_pixels():
    labels = _head_labels((128, 192))
    labels = cv2.resize(labels, (192, 128), interpolation=cv2.INTER_NEAREST)
    for pixel_size in (None, (0.2, 0.1)):
        biometry = measure_biometry(labels, pixel_size)
        rgb = np.zeros((128, 192, 3), dtype=np.uint8)
        draw_head_ellipse(rgb, biometry.head, pixel_size, thickness=1)
        drawn = rgb.any(axis=2)  # anti-aliased: any colour left on the black canvas
        # The drawn ellipse lies on the mask's edge: every drawn pixel within 2 px of it.
        edge = cv2.morphologyEx((labels > 0).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3)))
        near_edge = cv2.dilate(edge, np.ones((5, 5))) > 0
        assert drawn.sum() > 100
        assert near_edge[drawn].mean() > 0.99, pixel_size


def test_biometry_overlay_writes_values_and_says_when_no_head():
    image = np.full((64, 96), 60, dtype=np.uint8)
    labels = _head_labels()
    measured = biometry_overlay(image, labels, FETAL_HEAD.names, measure_biometry(labels))
    empty = np.zeros_like(labels)
    missing = biometry_overlay(image, empty, FETAL_HEAD.names, None)
    assert (measured == ELLIPSE_COLOUR).all(axis=2).any()
    assert not (missing == ELLIPSE_COLOUR).all(axis=2).any()
    assert (missing[:10, -40:] > 150).any()  # the "no head found" text, top right


def test_comparison_grid_lays_out_titled_panels():
    image = np.full((64, 96), 90, dtype=np.uint8)
    labels = _head_labels()
    rows = [comparison_row(image, labels, np.zeros_like(labels), FETAL_HEAD.names, "x")] * 2
    out = grid(rows, gap=4)
    panel_h = rows[0][0].shape[0]
    assert out.shape == (2 * panel_h + 4, 3 * 96 + 2 * 4, 3)
    prediction_panel = out[panel_h - 64 : panel_h, 2 * 100 :]
    assert (prediction_panel == 90).all()  # an empty prediction leaves the image as it is


def test_unsupported_arcs_drawn_in_their_own_colour():
    labels = np.zeros((128, 192), dtype=np.uint8)
    cv2.ellipse(labels, (96, 64), (60, 40), 0, 0, 360, 1, -1)
    labels[:, 140:] = 0  # a shadowed side: the mask stops short of the skull
    head = measure_biometry(labels).head
    assert head.check and head.unsupported_sectors
    rgb = draw_head_ellipse(np.zeros((128, 192, 3), dtype=np.uint8), head)
    unsupported = (rgb == UNSUPPORTED_COLOUR).all(axis=2)
    # Unsupported (see head.unsupported_sectors): the cut right side; supported: top and bottom.
    assert unsupported[:, 140:].any()
    assert not unsupported[:, 80:105].any()
