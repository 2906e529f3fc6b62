"""B-mode fetal head phantom (pure numpy): one scan, its label mask and its exact geometry.

PLACEHOLDER RENDERING: the look is being calibrated against real HC18 scans; the API
(``HeadEllipse``, ``PhantomScan``, ``render_scan``) is fixed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class HeadEllipse:
    """The generating head ellipse in image pixels; the head label (brain+CSP+LV) fills it."""

    cx: float
    cy: float
    semi_major: float
    semi_minor: float
    angle_deg: float  # rotation of the major axis from the +x axis, image coordinates
    pixel_size_mm: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PhantomScan:
    image: np.ndarray  # (H, W) uint8 B-mode
    labels: np.ndarray  # (H, W) uint8: 0 background, 1 brain, 2 CSP, 3 LV
    head: HeadEllipse


def ellipse_mask(h: int, w: int, cx, cy, a, b, angle_deg) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = math.radians(angle_deg)
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def render_scan(
    rng: np.random.Generator,
    width: int = 959,
    height: int = 661,
    *,
    has_csp: bool,
    has_lv: bool,
    pixel_size_mm: float,
) -> PhantomScan:
    a = rng.uniform(0.28, 0.36) * width
    b = a * rng.uniform(0.70, 0.85)
    cx = width / 2 + rng.uniform(-0.05, 0.05) * width
    cy = height / 2 + rng.uniform(-0.05, 0.05) * height
    angle = rng.uniform(-30, 30)
    head = HeadEllipse(cx, cy, a, b, angle, pixel_size_mm)
    labels = ellipse_mask(height, width, cx, cy, a, b, angle).astype(np.uint8)
    if has_csp:
        labels[ellipse_mask(height, width, cx, cy, 0.12 * a, 0.06 * b, angle)] = 2
    if has_lv:
        ox = 0.45 * a * math.cos(math.radians(angle))
        oy = 0.45 * a * math.sin(math.radians(angle))
        labels[ellipse_mask(height, width, cx + ox, cy + oy, 0.2 * a, 0.08 * b, angle)] = 3
    image = (rng.rayleigh(40, size=(height, width)) + 60 * (labels == 0)).clip(0, 255)
    return PhantomScan(image.astype(np.uint8), labels, head)
