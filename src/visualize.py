"""The one home for overlays: colour label maps, contours, the head ellipse with its values,
a legend, and side-by-side panels. Used by ``src.predict``, the training callback and the
notebooks, so every picture of a mask looks the same.

Pure numpy / OpenCV (no matplotlib, no torch): images in, RGB uint8 arrays out. Colours come
from a ``ClassSet``'s ``display_colours`` (``class_colours`` finds the registry's set by its
names, or makes a distinct palette for any other class set).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from src.biometry import Biometry, HeadMeasurement
from src.data.classes import RGB, class_set_for

ELLIPSE_COLOUR: RGB = (255, 255, 0)  # yellow: stands out from the class colours
UNSUPPORTED_COLOUR: RGB = (255, 140, 0)  # orange: parts of the ellipse no contour supports
TEXT_COLOUR: RGB = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colours(names: Sequence[str]) -> tuple[RGB, ...]:
    """Display colour per label id: the registry's colours for a known class set, else
    evenly spaced hues (background black) so any class set can be drawn."""
    known = class_set_for(names)
    if known is not None:
        return known.display_colours
    hues = np.linspace(0, 180, max(len(names) - 1, 1), endpoint=False).astype(np.uint8)
    hsv = np.stack([hues, np.full_like(hues, 200), np.full_like(hues, 240)], axis=-1)
    rgb = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]
    return ((0, 0, 0), *(tuple(int(v) for v in colour) for colour in rgb[: len(names) - 1]))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 grey (H, W) or RGB (H, W, 3) image as a fresh RGB (H, W, 3) array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image.copy()
    raise ValueError(f"expected a (H, W) or (H, W, 3) image, got shape {image.shape}")


def _check_labels(labels: np.ndarray, shape: tuple[int, ...], colours: Sequence[RGB]) -> None:
    if labels.shape != shape[:2]:
        raise ValueError(f"label map shape {labels.shape} differs from the image's {shape[:2]}")
    if labels.size and int(labels.max()) >= len(colours):
        raise ValueError(f"label {int(labels.max())} has no colour ({len(colours)} classes)")


def overlay_labels(
    image: np.ndarray, labels: np.ndarray, colours: Sequence[RGB], alpha: float = 0.45
) -> np.ndarray:
    """Blend each labelled pixel with its class colour; background (label 0) is untouched."""
    rgb = to_rgb(image)
    labels = np.asarray(labels)
    _check_labels(labels, rgb.shape, colours)
    painted = labels > 0
    palette = np.asarray(colours, dtype=np.float32)
    blended = (1 - alpha) * rgb[painted] + alpha * palette[labels[painted]]
    rgb[painted] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return rgb


def draw_contours(
    rgb: np.ndarray, labels: np.ndarray, colours: Sequence[RGB], thickness: int = 1
) -> np.ndarray:
    """Outline every foreground class of ``labels`` in its colour (in place; returned)."""
    _check_labels(np.asarray(labels), rgb.shape, colours)
    for label in np.unique(labels):
        if label == 0:
            continue
        region = (labels == label).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, colours[int(label)], thickness, cv2.LINE_AA)
    return rgb


def _pixel_size_yx(head: HeadMeasurement, pixel_size_mm: float | Sequence[float] | None):
    if head.units == "px":
        return 1.0, 1.0
    if pixel_size_mm is None:
        raise ValueError("a head measured in mm needs its pixel_size_mm to be drawn")
    pair = np.broadcast_to(np.asarray(pixel_size_mm, dtype=np.float64), (2,))
    return float(pair[0]), float(pair[1])


def _in_runs(degrees: np.ndarray, runs: Sequence[tuple[float, float]]) -> np.ndarray:
    inside = np.zeros(degrees.shape, dtype=bool)
    for start, end in runs:  # start > end wraps through 0 (see HeadMeasurement)
        inside |= (
            (degrees >= start) & (degrees < end)
            if start <= end
            else ((degrees >= start) | (degrees < end))
        )
    return inside


def draw_head_ellipse(
    rgb: np.ndarray,
    head: HeadMeasurement,
    pixel_size_mm: float | Sequence[float] | None = None,
    thickness: int = 2,
) -> np.ndarray:
    """Draw the fitted head ellipse (in place; returned); the arcs in sectors that no mask
    contour supports (``head.unsupported_sectors``) are drawn in orange.

    The ellipse is sampled in the measurement's own units and mapped to pixels per axis:
    with anisotropic pixels it is an ellipse in mm, not in pixel space."""
    size_y, size_x = _pixel_size_yx(head, pixel_size_mm)
    t = np.linspace(0, 2 * math.pi, 361)
    cos, sin = math.cos(head.angle_rad), math.sin(head.angle_rad)
    u, v = head.semi_axis_a * np.cos(t), head.semi_axis_b * np.sin(t)
    x_units, y_units = u * cos - v * sin, u * sin + v * cos
    directions = np.degrees(np.arctan2(y_units, x_units)) % 360
    unsupported = _in_runs(directions, head.unsupported_sectors)
    xy = np.stack([(head.center_x + x_units) / size_x, (head.center_y + y_units) / size_y], 1)
    points = np.rint(xy * 16).astype(np.int32)  # 4 fractional bits: sub-pixel drawing
    for start in range(len(points) - 1):
        colour = UNSUPPORTED_COLOUR if unsupported[start] else ELLIPSE_COLOUR
        cv2.line(
            rgb, tuple(points[start]), tuple(points[start + 1]), colour, thickness, cv2.LINE_AA, 4
        )
    return rgb


def draw_markers(
    rgb: np.ndarray, points: Sequence[tuple[float, float]], colours: Sequence[RGB]
) -> np.ndarray:
    """A ringed cross at each (x, y) point in its colour, outlined in black so it shows on
    any class colour (the viewer's quiz: where a student clicked); in place, returned."""
    scale, _ = _text_scale(rgb)
    size = max(int(round(8 * scale)), 4)
    for (x, y), colour in zip(points, colours, strict=True):
        centre = (int(round(x)), int(round(y)))
        for ink, width in (((0, 0, 0), 4), (colour, 2)):
            cv2.drawMarker(rgb, centre, ink, cv2.MARKER_CROSS, 2 * size, width, cv2.LINE_AA)
            cv2.circle(rgb, centre, size, ink, width, cv2.LINE_AA)
    return rgb


def biometry_lines(biometry: Biometry) -> list[str]:
    """The measured values as short text lines (what an overlay shows)."""
    head, units = biometry.head, biometry.head.units
    lines = [f"HC {head.hc:.1f} {units}", f"BPD {head.bpd:.1f}  OFD {head.ofd:.1f} {units}"]
    for name, width in (("CSP", biometry.csp_width), ("LV", biometry.lv_width)):
        if width is not None:
            lines.append(f"{name} {width:.1f} {units}")
    if head.check:
        lines.append(f"CHECK fit: {head.unsupported_fraction:.0%} unsupported")
    return lines


def _text_scale(rgb: np.ndarray) -> tuple[float, int]:
    """Font scale and line height proportional to the image (readable at 64 to 1000 px)."""
    scale = max(0.3, min(rgb.shape[:2]) / 600)
    return scale, int(round(26 * scale)) + 4


def draw_text_block(
    rgb: np.ndarray, lines: Sequence[str], corner: str = "top-right", indent: int = 0
) -> np.ndarray:
    """Text lines on a dark box in a corner (``top-left`` or ``top-right``), in place;
    ``indent`` pixels left free before the text (for legend swatches)."""
    if not lines:
        return rgb
    scale, step = _text_scale(rgb)
    width = max(cv2.getTextSize(line, _FONT, scale, 1)[0][0] for line in lines) + 8 + indent
    height = step * len(lines) + 4
    left = 0 if corner == "top-left" else max(rgb.shape[1] - width, 0)
    box = rgb[:height, left : left + width]
    box[:] = (box * 0.35).astype(np.uint8)
    for row, line in enumerate(lines):
        origin = (left + 4 + indent, step * (row + 1) - 2)
        cv2.putText(rgb, line, origin, _FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
    return rgb


def draw_legend(rgb: np.ndarray, names: Sequence[str], colours: Sequence[RGB]) -> np.ndarray:
    """A colour swatch and name for every foreground class, top-left, in place."""
    scale, step = _text_scale(rgb)
    side = max(int(step * 0.6), 3)
    draw_text_block(rgb, names[1:], corner="top-left", indent=side + 4)
    for row, colour in enumerate(colours[1:]):
        top = step * row + (step - side) // 2 + 2
        cv2.rectangle(rgb, (4, top), (4 + side, top + side), colour, thickness=-1)
    return rgb


def biometry_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    biometry: Biometry | None,
    pixel_size_mm: float | Sequence[float] | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """The picture ``src.predict`` writes: class colours, contours, legend, the head ellipse
    and the measured values (or "no head found")."""
    colours = class_colours(names)
    rgb = draw_contours(overlay_labels(image, labels, colours, alpha), labels, colours)
    if biometry is not None:
        draw_head_ellipse(rgb, biometry.head, pixel_size_mm)
    draw_legend(rgb, names, colours)
    draw_text_block(rgb, biometry_lines(biometry) if biometry else ["no head found"])
    return rgb


def titled(rgb: np.ndarray, title: str) -> np.ndarray:
    """``rgb`` with a black title strip above it."""
    scale, step = _text_scale(rgb)
    strip = np.zeros((step + 4, rgb.shape[1], 3), dtype=np.uint8)
    cv2.putText(strip, title, (4, step - 2), _FONT, scale, TEXT_COLOUR, 1, cv2.LINE_AA)
    return np.concatenate([strip, rgb], axis=0)


def grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 4) -> np.ndarray:
    """RGB panels in rows and columns on black, each cell as large as the largest panel."""
    if not rows or not all(rows):
        raise ValueError("grid needs at least one panel in every row")
    cell_h = max(panel.shape[0] for row in rows for panel in row)
    cell_w = max(panel.shape[1] for row in rows for panel in row)
    columns = max(len(row) for row in rows)
    canvas = np.zeros(
        (len(rows) * (cell_h + gap) - gap, columns * (cell_w + gap) - gap, 3), dtype=np.uint8
    )
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            top, left = r * (cell_h + gap), c * (cell_w + gap)
            canvas[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
    return canvas


def comparison_row(
    image: np.ndarray,
    truth: np.ndarray,
    predicted: np.ndarray,
    names: Sequence[str],
    title: str = "",
    alpha: float = 0.45,
) -> list[np.ndarray]:
    """Image, true mask and predicted mask overlays as three titled panels (one grid row)."""
    colours = class_colours(names)
    truth_panel = draw_legend(overlay_labels(image, truth, colours, alpha), names, colours)
    return [
        titled(to_rgb(image), title),
        titled(truth_panel, "truth"),
        titled(overlay_labels(image, predicted, colours, alpha), "prediction"),
    ]
