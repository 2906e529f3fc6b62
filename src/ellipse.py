"""Ellipse geometry shared by the biometry and the HC18 reader: the least-squares fit, a
point's coordinates in an ellipse's frame, the filled mask of a fitted outline, and HC18's
perimeter formula. Pure numpy / OpenCV (no project imports), so data readers and biometry
both build on it without importing each other."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# The ellipse parameters of a HeadMeasurement (centre, semi-axes, angle), in this order.
ELLIPSE_FIELDS = ("center_x", "center_y", "semi_axis_a", "semi_axis_b", "angle_rad")


@dataclass(frozen=True)
class Ellipse:
    cx: float
    cy: float
    a: float  # major semi-axis, along angle
    b: float
    angle: float  # radians in [0, pi)


def ramanujan_circumference(a: float, b: float) -> float:
    """Ramanujan's second approximation of an ellipse's perimeter (HC18's HC formula)."""
    h = (a - b) ** 2 / (a + b) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def fit_ellipse(points: np.ndarray) -> Ellipse:
    centre = points.mean(axis=0)
    (x, y), (width, height), angle_deg = cv2.fitEllipseDirect((points - centre).astype(np.float32))
    # OpenCV: ``width`` is the axis at ``angle_deg`` from +x towards +y.
    if height > width:
        width, height, angle_deg = height, width, angle_deg + 90.0
    return Ellipse(
        float(x + centre[0]),
        float(y + centre[1]),
        width / 2,
        height / 2,
        math.radians(angle_deg) % math.pi,
    )


def ellipse_frame(points: np.ndarray, ellipse: Ellipse) -> tuple[np.ndarray, np.ndarray]:
    """Point coordinates along the ellipse's major (u) and minor (v) axes."""
    dx, dy = points[:, 0] - ellipse.cx, points[:, 1] - ellipse.cy
    cos, sin = math.cos(ellipse.angle), math.sin(ellipse.angle)
    return dx * cos + dy * sin, -dx * sin + dy * cos


def fitted_ellipse_mask(
    shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray, inset_px: float = 0.0
) -> np.ndarray:
    """Boolean (H, W) mask of the pixels whose centre lies inside the least-squares ellipse
    through the points (``rows``, ``cols``), its semi-axes shortened by ``inset_px``: an
    outline drawn around (or outside) a curve becomes the region that curve encloses (used by
    the HC18 reader for the sonographers' outlines)."""
    ellipse = fit_ellipse(np.stack([cols, rows], axis=1).astype(np.float64))
    ellipse = Ellipse(
        ellipse.cx, ellipse.cy, ellipse.a - inset_px, ellipse.b - inset_px, ellipse.angle
    )
    grid_rows, grid_cols = np.indices(shape)
    u, v = ellipse_frame(
        np.stack([grid_cols.ravel(), grid_rows.ravel()], axis=1).astype(np.float64), ellipse
    )
    return ((u / ellipse.a) ** 2 + (v / ellipse.b) ** 2 <= 1).reshape(shape)
