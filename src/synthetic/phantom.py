"""B-mode fetal head phantom (numpy + cv2): one scan, its label mask and its exact geometry.

The scene (tissue, amniotic fluid, skull, brain, midline, CSP, LV) is evaluated on the
scanner's own polar grid (depth x beam angle), because three B-mode effects live there:
speckle grains follow the beam (short in depth, wider across it and wider with depth),
attenuation and the skull's acoustic shadow accumulate along each beam, and scan
conversion to the Cartesian image turns the grid into the sector fan. Per scan:

1. echo power maps (diffuse scattering, coherent specular echoes, attenuation density);
2. speckle: a complex Gaussian scatterer field scaled by the diffuse echo, blurred by the
   point-spread function -> Rayleigh envelope; coherent (specular) echoes add their power;
3. spatial compounding (averaging the echo power of several looks), attenuation
   exp(-integral of mu along the beam), part of it undone by time-gain compensation;
4. log compression to a random display range and scan conversion (cv2.remap).

The look's ranges in ``BModeLook`` are calibrated against real HC18 scans; see
``experiments/phantom_calibration``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

Range = tuple[float, float]


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
    # (H, W) uint8: the same scan without speckle (render_scan(..., clean=True)), else None
    clean: np.ndarray | None = None


@dataclass(frozen=True)
class BModeLook:
    """Ranges (low, high) each scan draws its look from. Echo levels are powers relative to
    soft tissue (= 1); the defaults are calibrated against HC18 scans."""

    head_circumference_mm: Range = (100.0, 340.0)
    head_axis_ratio: Range = (0.72, 0.9)  # semi-minor / semi-major (cephalic index)
    head_angle_deg: Range = (-35.0, 35.0)
    head_width_fraction: Range = (0.4, 0.9)  # of the image width
    head_height_fraction: float = 0.88  # the most of the image height a head may take
    head_off_centre: float = 0.6  # share of the free room the centre may use
    apex_above_image: Range = (0.4, 1.0)  # sector apex above the top edge, x image height
    sector_half_angle_deg: Range = (22.0, 34.0)
    top_gap: Range = (0.0, 0.1)  # first imaged depth below the top edge, x image height
    deepest_depth: Range = (1.0, 1.2)  # last imaged depth, x apex-to-bottom-edge distance
    tissue_texture_db: Range = (3.0, 6.0)  # std of slow tissue echo variation
    fluid_probability: float = 0.8
    fluid_amount: Range = (0.0, 1.0)  # 0: a thin pocket by the head, 1: wide pockets
    fluid_echo: Range = (0.03, 0.1)
    brain_echo: Range = (0.7, 1.4)
    csp_lv_echo: Range = (0.04, 0.15)  # fluid-filled, but hazy from the tissue around
    skull_echo: Range = (2000.0, 10000.0)
    skull_thickness_mm: Range = (0.8, 1.5)
    skull_transmission: Range = (0.5, 0.85)  # power through one skull wall
    skull_side_share: Range = (1e-4, 3e-3)  # echo where the beam grazes the skull (log-uniform)
    midline_echo: Range = (30.0, 300.0)  # and the other brain interfaces
    brain_lines: tuple[int, int] = (3, 8)  # short echoes besides the midline (walls, fissures)
    attenuation_nepers: Range = (1.0, 3.0)  # two-way tissue loss over the image height
    gain_compensation: Range = (0.6, 1.0)  # share of that loss undone by TGC
    tissue_grey: Range = (25.0, 50.0)  # display grey of mean soft tissue echo
    dynamic_range_db: Range = (50.0, 60.0)
    speckle_axial_px: Range = (0.6, 0.9)  # point-spread function std along the beam
    speckle_lateral_px: Range = (3.0, 4.0)  # and across it, at mid depth
    compounding_px: Range = (2.5, 4.0)  # std across the beam (1/2 along it) of power averaging
    clutter_echo: Range = (0.1, 0.2)  # reverberation haze that keeps fluid off pure black


CALIBRATED_LOOK = BModeLook()

# Real heads: CSP in the anterior third on the midline, about 4-8 mm wide and 8-15 mm long;
# the measured lateral ventricle (atrium, < 10 mm wide) in the posterior far hemisphere.
# Fractions of the head's semi-axes.
_CSP_CENTRE, _CSP_HALF_LENGTH, _CSP_HALF_WIDTH = (0.28, 0.42), (0.10, 0.16), (0.05, 0.09)
_LV_CENTRE_U, _LV_CENTRE_V, _LV_TILT_DEG = (0.22, 0.40), (0.25, 0.38), (5.0, 18.0)
_LV_HALF_LENGTH, _LV_HALF_WIDTH = (0.18, 0.28), (0.07, 0.11)
_BOX_SQUARES = 2  # CSP superellipse |u/a|^4 + |v/b|^4: a box with rounded corners


def _normalized_radius(x, y, cx, cy, a, b, angle_deg, squares: int = 1):
    """((u/a)^2)^squares + ((v/b)^2)^squares in the shape's own frame: <= 1 inside."""
    t = math.radians(angle_deg)
    dx, dy = x - cx, y - cy
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    return ((u / a) ** 2) ** squares + ((v / b) ** 2) ** squares


def ellipse_mask(h: int, w: int, cx, cy, a, b, angle_deg) -> np.ndarray:
    """Pixels whose centre (x, y) lies in the ellipse (semi-axes a along angle_deg, b).

    Solved row by row: on row y the ellipse is the interval of x where a quadratic in
    dx = x - cx is <= 0, so the cost is one comparison per pixel instead of a dozen
    full-image float operations (this mask is drawn for every phantom)."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    dy = np.arange(h, dtype=np.float64) - cy
    quad = c * c / a**2 + s * s / b**2
    lin = 2 * dy * c * s * (1 / a**2 - 1 / b**2)
    const = dy**2 * (s * s / a**2 + c * c / b**2) - 1
    disc = lin**2 - 4 * quad * const
    root = np.sqrt(np.maximum(disc, 0))
    lo = np.where(disc >= 0, (-lin - root) / (2 * quad), np.inf)
    hi = np.where(disc >= 0, (-lin + root) / (2 * quad), -np.inf)
    dx = np.arange(w, dtype=np.float64)[None, :] - cx
    return (dx >= lo[:, None]) & (dx <= hi[:, None])


@dataclass(frozen=True)
class _Shape:
    """A superellipse in image pixels (CSP, LV)."""

    cx: float
    cy: float
    a: float
    b: float
    angle_deg: float
    squares: int

    def radius(self, x, y):
        return _normalized_radius(
            x, y, self.cx, self.cy, self.a, self.b, self.angle_deg, self.squares
        )

    def mask(self, h: int, w: int) -> np.ndarray:
        """Evaluated on the bounding box only, to keep it cheap."""
        r = max(self.a, self.b) + 1
        x0, x1 = max(int(self.cx - r), 0), min(int(self.cx + r) + 2, w)
        y0, y1 = max(int(self.cy - r), 0), min(int(self.cy + r) + 2, h)
        out = np.zeros((h, w), bool)
        yy = np.arange(y0, y1, dtype=np.float64)[:, None]
        xx = np.arange(x0, x1, dtype=np.float64)[None, :]
        out[y0:y1, x0:x1] = self.radius(xx, yy) <= 1.0
        return out


def _frame_to_image(cx, cy, angle_deg, u, v):
    """Image coordinates of points given along (u) and across (v) a rotated frame."""
    t = math.radians(angle_deg)
    return cx + u * math.cos(t) - v * math.sin(t), cy + u * math.sin(t) + v * math.cos(t)


def _head_frame_to_image(head: HeadEllipse, u, v):
    return _frame_to_image(head.cx, head.cy, head.angle_deg, u, v)


def _ramanujan_factor(axis_ratio: float) -> float:
    """Head circumference / semi-major axis for an ellipse of this axis ratio."""
    h = ((1 - axis_ratio) / (1 + axis_ratio)) ** 2
    return math.pi * (1 + axis_ratio) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


def _draw_head(rng, look: BModeLook, width: int, height: int, pixel_size_mm: float):
    """Head size from a plausible head circumference in mm, preferring sizes that fill a
    realistic share of the image width; clipped only to keep the head inside the image."""
    ratio = rng.uniform(*look.head_axis_ratio)
    angle = rng.uniform(*look.head_angle_deg)
    t = math.radians(angle)
    half_w_per_a = math.hypot(math.cos(t), ratio * math.sin(t))
    half_h_per_a = math.hypot(math.sin(t), ratio * math.cos(t))
    margin = 0.03 * min(width, height)
    a_fit = min(
        (width / 2 - margin) / half_w_per_a, look.head_height_fraction * height / 2 / half_h_per_a
    )
    lo_fill, hi_fill = (f * width / 2 / half_w_per_a for f in look.head_width_fraction)
    per_px = _ramanujan_factor(ratio) * pixel_size_mm
    lo_hc, hi_hc = (hc / per_px for hc in look.head_circumference_mm)
    hi = min(hi_hc, hi_fill, a_fit)
    lo = min(max(lo_hc, lo_fill), hi)  # the fill preference yields to the plausible range
    a = rng.uniform(lo, hi)
    half_w, half_h = a * half_w_per_a, a * half_h_per_a
    # Sonographers centre the head: it uses only part of the free room around the middle.
    slack_x = max(width / 2 - half_w - margin, 0.0) * look.head_off_centre
    slack_y = max(height / 2 - half_h - margin, 0.0) * look.head_off_centre
    cx = width / 2 + rng.uniform(-slack_x, slack_x)
    cy = height / 2 + rng.uniform(-slack_y, slack_y)
    return HeadEllipse(cx, cy, a, a * ratio, angle, pixel_size_mm)


def _draw_csp_lv(rng, head: HeadEllipse):
    """CSP box on the midline in the anterior third; LV in the posterior far hemisphere
    (the near one hides in reverberation on real scans). Sizes relative to the head."""
    a, b = head.semi_major, head.semi_minor
    front = rng.choice((-1.0, 1.0))
    cu = front * rng.uniform(*_CSP_CENTRE) * a
    csp = _Shape(
        *_head_frame_to_image(head, cu, 0.0),
        rng.uniform(*_CSP_HALF_LENGTH) * a,
        rng.uniform(*_CSP_HALF_WIDTH) * b,
        head.angle_deg,
        _BOX_SQUARES,
    )
    # The far hemisphere: the one whose v-axis points down the image (away from the probe).
    far = 1.0 if math.cos(math.radians(head.angle_deg)) >= 0 else -1.0
    lu, lv = -front * rng.uniform(*_LV_CENTRE_U) * a, far * rng.uniform(*_LV_CENTRE_V) * b
    # Tilted so that the posterior end diverges from the midline, as the atria do; its
    # own u axis points to the posterior end.
    tilt = -front * far * rng.uniform(*_LV_TILT_DEG) + (180.0 if front > 0 else 0.0)
    lv = _Shape(
        *_head_frame_to_image(head, lu, lv),
        rng.uniform(*_LV_HALF_LENGTH) * a,
        rng.uniform(*_LV_HALF_WIDTH) * b,
        head.angle_deg + tilt,
        1,
    )
    return csp, lv


@dataclass(frozen=True)
class _Sector:
    """Curvilinear probe geometry: apex above the image, beams fanning downwards."""

    apex_x: float
    apex_y: float
    r_min: float
    r_max: float
    half_angle: float  # radians

    def polar(self, x, y):
        """(depth from apex, beam angle from the +y axis) of image points."""
        dx, dy = x - self.apex_x, y - self.apex_y
        return np.sqrt(dx * dx + dy * dy), np.arctan2(dx, dy)


def _draw_sector(rng, look: BModeLook, width: int, height: int, head: HeadEllipse) -> _Sector:
    """A random fan, widened / extended where needed so that the whole head is imaged."""
    apex_x = width / 2 + rng.uniform(-0.04, 0.04) * width
    apex_y = -rng.uniform(*look.apex_above_image) * height
    r_min = -apex_y + rng.uniform(*look.top_gap) * height
    r_max = (height - apex_y) * rng.uniform(*look.deepest_depth)
    half_angle = math.radians(rng.uniform(*look.sector_half_angle_deg))
    phi = np.linspace(0, 2 * np.pi, 90)
    # The head with its scalp and a little surrounding tissue.
    ring_x, ring_y = _head_frame_to_image(
        head, 1.12 * head.semi_major * np.cos(phi), 1.12 * head.semi_minor * np.sin(phi)
    )
    r, theta = _Sector(apex_x, apex_y, r_min, r_max, half_angle).polar(ring_x, ring_y)
    return _Sector(
        apex_x,
        apex_y,
        max(min(r_min, float(r.min())), 1.0),
        max(r_max, float(r.max())),
        max(half_angle, float(np.abs(theta).max())),
    )


def _smooth_noise(rng, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Random field of about unit std that varies over about shape / cells samples."""
    coarse = rng.standard_normal(cells).astype(np.float32)
    field = cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
    return field / max(float(field[::4, ::4].std()), 1e-6)


def _from_db(level_db):
    return np.float32(10.0) ** (np.asarray(level_db, np.float32) / np.float32(10.0))


_DRAW_SHIFT = 4  # cv2 drawing with 1/16 px precision


def _fixed_point(*coordinates) -> tuple[int, ...]:
    return tuple(round(float(c) * (1 << _DRAW_SHIFT)) for c in coordinates)


def _draw_interfaces(rng, look: BModeLook, head: HeadEllipse, csp, lv, labels) -> np.ndarray:
    """Specular brain interfaces as thin antialiased lines in image pixels, amplitude
    0..255 (255: the strongest midline echo): the broken midline, short echoes roughly
    parallel to it (ventricle walls, fissures), the CSP's long walls (the septum leaves)
    and part of the LV's wall. cv2 draws them in microseconds, where evaluating each line
    on the whole scan grid would not."""
    canvas = np.zeros(labels.shape, np.uint8)
    a, b = head.semi_major, head.semi_minor

    def polyline(frame, u, v, amplitudes):
        xs, ys = _frame_to_image(*frame, u, v)
        for i, amplitude in enumerate(amplitudes):
            start, end = _fixed_point(xs[i], ys[i]), _fixed_point(xs[i + 1], ys[i + 1])
            colour = round(255 * float(amplitude))
            cv2.line(canvas, start, end, colour, 2, cv2.LINE_AA, _DRAW_SHIFT)

    head_frame = (head.cx, head.cy, head.angle_deg)
    midline_level = math.sqrt(rng.uniform(*look.midline_echo) / look.midline_echo[1])
    u = np.linspace(-0.92, 0.92, 17) * a
    polyline(head_frame, u, np.zeros_like(u), midline_level * rng.uniform(0.2, 1.0, 16) ** 2)
    for _ in range(rng.integers(*look.brain_lines, endpoint=True)):
        centre_u, centre_v = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)
        half, bend = rng.uniform(0.05, 0.18), rng.uniform(-0.4, 0.4)
        along = np.linspace(-half, half, 9)
        taper = 1 - np.abs(along[:-1] + along[1:]) / (2 * half)
        v = (centre_v + bend * along**2) * b
        polyline(head_frame, (centre_u + along) * a, v, rng.uniform(0.4, 1.0, 8) * taper)
    canvas[labels != 1] = 0  # inside the brain only, the midline broken by the CSP
    if csp is not None:
        csp_frame = (csp.cx, csp.cy, csp.angle_deg)
        level = math.sqrt(rng.uniform(0.3, 1.0))
        for side in (-1, 1):
            polyline(csp_frame, np.array([-csp.a, csp.a]), np.full(2, side * csp.b), [level])
    if lv is not None:  # part of its wall
        level = round(255 * math.sqrt(rng.uniform(0.05, 0.3)))
        centre, axes = _fixed_point(lv.cx, lv.cy), _fixed_point(lv.a, lv.b)
        start = rng.uniform(0, 360)
        end = start + rng.uniform(90, 200)
        cv2.ellipse(
            canvas, centre, axes, lv.angle_deg, start, end, level, 2, cv2.LINE_AA, _DRAW_SHIFT
        )
    return canvas


def _scene_regions(rng, lv, labels: np.ndarray) -> np.ndarray:
    """The labels plus 4 = choroid plexus: an echogenic plug in the posterior part of the
    LV on many scans (the label stays LV)."""
    regions = labels.copy()
    choroid_start = rng.uniform(0.2, 1.3)  # along the LV's half length; > 1: none in view
    if lv is not None and choroid_start < 1:
        plug = np.zeros_like(labels)
        half_length = (1 - choroid_start) / 2 * lv.a + 1
        along = (1 + choroid_start) / 2 * lv.a
        centre = _fixed_point(*_frame_to_image(lv.cx, lv.cy, lv.angle_deg, along, 0.0))
        axes = _fixed_point(half_length, 0.8 * lv.b)
        cv2.ellipse(plug, centre, axes, lv.angle_deg, 0, 360, 1, -1, cv2.LINE_8, _DRAW_SHIFT)
        regions[(plug > 0) & (labels == 3)] = 4
    return regions


@dataclass(frozen=True)
class _EchoMaps:
    diffuse: np.ndarray  # power of the random scatterers (speckle)
    coherent: np.ndarray  # power of the specular skull echo
    attenuation: np.ndarray  # two-way power attenuation (nepers) per px of depth
    tissue_attenuation: float  # the same, of soft tissue: what time-gain compensation undoes


def _echo_maps(rng, look: BModeLook, head: HeadEllipse, regions, grid, image_height: int):
    """The scene at the grid points: echo powers relative to soft tissue."""
    x, y, depth, beam_angle = grid
    shape = x.shape
    a, b, px_mm = head.semi_major, head.semi_minor, head.pixel_size_mm
    t = math.radians(head.angle_deg)
    dx, dy = x - head.cx, y - head.cy
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad_u, grad_v = u / a**2, v / b**2  # outward normal of the ellipse family, head frame
    grad = np.maximum(np.sqrt(grad_u * grad_u + grad_v * grad_v), 1e-9)
    dist = (rho - 1.0) * rho / grad  # ~ signed distance to the head border in px
    region = cv2.remap(regions, x, y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)

    # Soft tissue: slow and fine echo variation, scattered bright streaks, and layers of
    # the abdominal wall parallel to the probe face near the top.
    texture_db = rng.uniform(*look.tissue_texture_db)
    diffuse = _from_db(
        texture_db * _smooth_noise(rng, shape, (5, 5))
        + 0.6 * texture_db * _smooth_noise(rng, shape, (16, 16))
        + 12.0 * np.maximum(_smooth_noise(rng, shape, (30, 8)) - 0.8, 0)
    )
    from_top = depth - depth.min()
    layers = _smooth_noise(rng, (shape[0], 1), (max(shape[0] // 30, 4), 1))
    diffuse *= _from_db(5.0 * layers * np.exp(-from_top / (0.2 * image_height)))
    for _ in range(rng.integers(0, 3, endpoint=True)):
        fascia_depth = rng.uniform(0.03, 0.25) * image_height
        wave = 0.02 * image_height * _smooth_noise(rng, (1, shape[1]), (1, 4))
        strength = rng.uniform(2, 10) * _from_db(3 * _smooth_noise(rng, (1, shape[1]), (1, 6)))
        diffuse += strength * np.exp(-0.5 * ((from_top - fascia_depth - wave) / 2.5) ** 2)

    # Amniotic fluid: anechoic pockets that hug the head, of random extent.
    attenuation_share = np.ones(shape, np.float32)
    if rng.uniform() < look.fluid_probability:
        closeness = np.exp(-np.maximum(dist, 0) / (0.3 * b))
        amount = rng.uniform(*look.fluid_amount)
        pocket = 1.4 * closeness + 0.6 * _smooth_noise(rng, shape, (3, 3))
        fluid = np.clip((pocket - (1.35 - 0.9 * amount)) / 0.08, 0.0, 1.0)
        diffuse = diffuse * (1 - fluid) + rng.uniform(*look.fluid_echo) * fluid
        attenuation_share -= 0.9 * fluid

    # Scalp: soft tissue just outside the skull, a little brighter than its surroundings.
    skull_px = float(
        np.clip(rng.uniform(*look.skull_thickness_mm) / px_mm, 2.0, max(0.08 * b, 2.0))
    )
    diffuse += 2.0 * np.exp(-0.5 * ((dist - skull_px) / skull_px) ** 2)

    # Brain: hypoechoic parenchyma, mottled (thalami, choroid plexus); anechoic CSP and LV.
    brain = rng.uniform(*look.brain_echo) * _from_db(
        3.0 * _smooth_noise(rng, shape, (8, 8))
        + 6.0 * np.maximum(_smooth_noise(rng, shape, (14, 10)) - 1.0, 0)
    )
    brain[region == 2] = rng.uniform(*look.csp_lv_echo)
    brain[region == 3] = rng.uniform(*look.csp_lv_echo)
    brain[region == 4] = rng.uniform(2, 5)
    inside = rho < 1.0
    diffuse = np.where(inside, brain, diffuse)
    attenuation_share[inside] = 0.6

    # Skull: a bright specular ring just inside the head border, brightest (and widest, as
    # the echo blooms) where the beam meets it head-on, patchy around the head; evaluated
    # on the ring's band only.
    band = np.nonzero((dist > -1.6 * skull_px) & (dist < 0.3 * skull_px))
    band_u, band_v, band_grad = u[band], v[band], grad[band]
    normal_x = (band_u / a**2) * math.cos(t) - (band_v / b**2) * math.sin(t)
    normal_y = (band_u / a**2) * math.sin(t) + (band_v / b**2) * math.cos(t)
    beam = beam_angle[band]
    incidence = np.abs(normal_x * np.sin(beam) + normal_y * np.cos(beam)) / band_grad
    around = np.arctan2(band_v / b, band_u / a)
    patchiness = sum(
        rng.normal() * np.cos(k * around + rng.uniform(0, 2 * np.pi)) for k in range(1, 6)
    )
    # Bone surface roughness: echo strength varies over a few resolution cells.
    roughness = _smooth_noise(rng, shape, (max(shape[0] // 6, 2), max(shape[1] // 6, 2)))[band]
    # Flat-topped across the wall with steep flanks (a Gaussian's tails would widen the
    # saturated ring far beyond the wall), its outer edge on the head border.
    half_wall = 0.5 * skull_px * (0.6 + 0.8 * incidence)
    ring = np.exp(-(((dist[band] + half_wall) / half_wall) ** 4))
    side_share = math.exp(rng.uniform(*np.log(look.skull_side_share)))
    skull = np.zeros(shape, np.float32)
    skull[band] = (
        rng.uniform(*look.skull_echo)
        * ring
        * _from_db(2.0 * patchiness + 3.0 * roughness)
        * (side_share + (1 - side_share) * incidence**16)
    )
    # One perpendicular wall passes the drawn share of the power. A beam grazing the skull
    # would cross it for tens of wall thicknesses; weighting by incidence keeps the loss of
    # any crossing near that of a perpendicular one (the shadow still darkens at the sides).
    wall_loss = -math.log(rng.uniform(*look.skull_transmission))
    ring_integral = 2 * math.gamma(1.25) * half_wall  # of the ring across the wall
    tissue_attenuation = rng.uniform(*look.attenuation_nepers) / image_height
    attenuation = tissue_attenuation * attenuation_share
    attenuation[band] += wall_loss / ring_integral * ring * (0.2 + 0.8 * incidence)
    return _EchoMaps(
        diffuse=diffuse + 0.1 * skull + rng.uniform(*look.clutter_echo),
        coherent=0.9 * skull,
        attenuation=attenuation,
        tissue_attenuation=tissue_attenuation,
    )


def _kernel_size(sigma: float) -> int:
    return 2 * math.ceil(3 * sigma) + 1


def _gaussian_blur(image: np.ndarray, axial_sigma: float, lateral_sigma: float) -> np.ndarray:
    """Blur of a (depth, beam) grid; sigmas in grid samples."""
    return cv2.GaussianBlur(
        image,
        (_kernel_size(lateral_sigma), _kernel_size(axial_sigma)),
        sigmaX=lateral_sigma,
        sigmaY=axial_sigma,
        borderType=cv2.BORDER_REFLECT,
    )


def speckle_envelope(
    rng: np.random.Generator, diffuse_power: np.ndarray, axial_sigma: float, lateral_sigma: float
) -> np.ndarray:
    """Echo envelope of random scatterers on a (depth, beam) grid: complex Gaussian
    scatterers weighted by the diffuse power and blurred by a Gaussian point-spread function
    (sigmas in grid samples). Rayleigh distributed, E[env^2] = diffuse power."""
    scatterers = rng.standard_normal((2, *diffuse_power.shape), dtype=np.float32)
    scatterers *= np.sqrt(diffuse_power / 2, dtype=np.float32)
    # The blur shrinks the variance by the sum of the squared kernel weights.
    kernel_gain = math.sqrt(
        float((cv2.getGaussianKernel(_kernel_size(lateral_sigma), lateral_sigma) ** 2).sum())
        * float((cv2.getGaussianKernel(_kernel_size(axial_sigma), axial_sigma) ** 2).sum())
    )
    real, imag = (
        _gaussian_blur(part, axial_sigma, lateral_sigma) / kernel_gain for part in scatterers
    )
    return np.sqrt(real * real + imag * imag)


# Polar grid steps (px): the speckle grid samples the point-spread function about twice per
# std. The scene is evaluated on every depth sample (the skull is thin in depth where it is
# bright) but only every second beam, and interpolated.
_DEPTH_STEP_PX, _BEAM_STEP_PX = 1.25, 2.0


# The scan-conversion lookup is smooth (the apex lies above the image), so it is computed on
# every 4th pixel and interpolated: errors < 0.01 px, 16x fewer square roots and arctangents.
_LOOKUP_STRIDE = 4


def _sparse_pixel_grid(width: int, height: int):
    """Pixel coordinates sampled so that cv2.resize by the stride, cropped by one stride,
    lands every sample on its pixel (cv2 aligns pixel centres, not corners)."""
    offset = _LOOKUP_STRIDE / 2 + 0.5
    xs = np.arange(width // _LOOKUP_STRIDE + 4, dtype=np.float32) * _LOOKUP_STRIDE - offset
    ys = np.arange(height // _LOOKUP_STRIDE + 4, dtype=np.float32) * _LOOKUP_STRIDE - offset
    return xs[None, :], ys[:, None]


def _upsample_to_pixels(sparse: np.ndarray, width: int, height: int) -> np.ndarray:
    s = _LOOKUP_STRIDE
    full = cv2.resize(sparse.astype(np.float32), None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    return full[s : s + height, s : s + width]


def render_scan(
    rng: np.random.Generator,
    width: int = 959,
    height: int = 661,
    *,
    has_csp: bool,
    has_lv: bool,
    pixel_size_mm: float,
    look: BModeLook = CALIBRATED_LOOK,
    clean: bool = False,
) -> PhantomScan:
    """One B-mode scan with its labels (head = the filled generating ellipse, CSP / LV
    painted over it when asked for) and the exact head geometry.

    ``clean``: also render the same scan without speckle (``PhantomScan.clean``): the
    expected echo power in place of the speckle's, everything else (and every random draw,
    so ``image`` is unchanged) the same. A true clean target for denoisers."""
    if width < 16 or height < 16:
        raise ValueError(f"render_scan: image must be at least 16 x 16 px, got {width} x {height}")
    if not pixel_size_mm > 0:
        raise ValueError(f"render_scan: pixel_size_mm must be > 0, got {pixel_size_mm}")
    head = _draw_head(rng, look, width, height, pixel_size_mm)
    csp, lv = _draw_csp_lv(rng, head)
    csp, lv = (csp if has_csp else None), (lv if has_lv else None)
    sector = _draw_sector(rng, look, width, height, head)
    labels = ellipse_mask(
        height, width, head.cx, head.cy, head.semi_major, head.semi_minor, head.angle_deg
    ).astype(np.uint8)
    head_region = labels == 1
    for shape, label in ((csp, 2), (lv, 3)):
        if shape is not None:
            labels[shape.mask(height, width) & head_region] = label

    # Polar grids: the fine one for speckle, and the scene's with every second beam; its
    # beam k sits at fine beam 2k + 0.5, where cv2.resize by 2 expects it.
    mid_depth = sector.r_min + 0.5 * min(sector.r_max - sector.r_min, height)
    n_depth = math.ceil((sector.r_max - sector.r_min) / _DEPTH_STEP_PX) + 1
    n_scene_beams = math.ceil(sector.half_angle * mid_depth / _BEAM_STEP_PX) + 1
    n_beams = 2 * n_scene_beams
    depth_step = (sector.r_max - sector.r_min) / (n_depth - 1)
    angle_step = 2 * sector.half_angle / (n_beams - 1)
    depths = (sector.r_min + depth_step * np.arange(n_depth, dtype=np.float32))[:, None]
    beam_angles = -sector.half_angle + angle_step * np.arange(n_beams, dtype=np.float32)[None, :]
    scene_angles = beam_angles[:, ::2] + np.float32(0.5 * angle_step)
    scene_grid = (
        sector.apex_x + depths * np.sin(scene_angles),
        sector.apex_y + depths * np.cos(scene_angles),
        np.broadcast_to(depths, (n_depth, n_scene_beams)),
        np.broadcast_to(scene_angles, (n_depth, n_scene_beams)),
    )
    regions = _scene_regions(rng, lv, labels)
    maps = _echo_maps(rng, look, head, regions, scene_grid, height)

    def to_fine(scene: np.ndarray) -> np.ndarray:
        return cv2.resize(scene, (n_beams, n_depth), interpolation=cv2.INTER_LINEAR)

    px_to_axial, px_to_lateral = 1 / depth_step, 1 / (mid_depth * angle_step)
    axial_sigma = rng.uniform(*look.speckle_axial_px) * px_to_axial
    lateral_sigma = rng.uniform(*look.speckle_lateral_px) * px_to_lateral
    envelope = speckle_envelope(rng, to_fine(maps.diffuse), axial_sigma, lateral_sigma)
    # Spatial compounding averages the echo power of several looks. Speckle decorrelates
    # between looks and is smoothed; a specular echo is the same in every look and keeps
    # its sharpness, and its cross term with the speckle (the Rician part of a single look)
    # averages out.
    compounding = rng.uniform(*look.compounding_px)
    compound_sigmas = (compounding / 2 * px_to_axial, compounding * px_to_lateral)
    powers = [_gaussian_blur(envelope**2, *compound_sigmas)]
    if clean:
        # E[envelope^2]: the diffuse power seen through the squared point-spread function
        # (a Gaussian of sigma / sqrt 2), compounded as the speckle is.
        expected = _gaussian_blur(
            to_fine(maps.diffuse), axial_sigma / math.sqrt(2), lateral_sigma / math.sqrt(2)
        )
        powers.append(_gaussian_blur(expected, *compound_sigmas))
    # Brain interfaces are specular too: bright where the beam meets the midline (and the
    # echoes roughly parallel to it) at right angles.
    interfaces = _draw_interfaces(rng, look, head, csp, lv, labels)
    fine_x = sector.apex_x + depths * np.sin(beam_angles)
    fine_y = sector.apex_y + depths * np.cos(beam_angles)
    amplitude = cv2.remap(interfaces, fine_x, fine_y, cv2.INTER_LINEAR).astype(np.float32) / 255
    facing_beam = np.cos(beam_angles + math.radians(head.angle_deg)) ** 4
    specular = to_fine(maps.coherent) + look.midline_echo[1] * amplitude**2 * (
        0.1 + 0.9 * facing_beam
    )
    specular_power = _gaussian_blur(specular, axial_sigma, lateral_sigma)
    # Attenuation along each beam (blurred across beams: the beam has a width), part of it
    # undone by time-gain compensation.
    attenuation = _gaussian_blur(maps.attenuation, 0.5, 2.0)
    loss = np.cumsum(to_fine(attenuation), axis=0) * depth_step
    gain_per_px = rng.uniform(*look.gain_compensation) * maps.tissue_attenuation
    gain_db = (10 / math.log(10)) * (gain_per_px * (depths - sector.r_min) - loss)

    # Log compression: mean soft tissue (power 1) is shown at the drawn grey level.
    dynamic_range = rng.uniform(*look.dynamic_range_db)
    floor_db = -rng.uniform(*look.tissue_grey) / 255 * dynamic_range

    # Scan conversion: each image pixel looks up its (depth, beam) position; outside the
    # fan cv2.remap returns the border value 0.
    r, theta = sector.polar(*_sparse_pixel_grid(width, height))
    map_x = _upsample_to_pixels((theta + sector.half_angle) / angle_step, width, height)
    map_y = _upsample_to_pixels((r - sector.r_min) / depth_step, width, height)

    def to_image(power: np.ndarray) -> np.ndarray:
        power_db = 10 * np.log10(power + specular_power + 1e-12) + gain_db
        grey = np.clip((power_db - floor_db) * (255 / dynamic_range), 0, 255)
        image = cv2.remap(
            grey.astype(np.float32),
            map_x,
            map_y,
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        return np.rint(image).astype(np.uint8)

    images = [to_image(power) for power in powers]
    return PhantomScan(images[0], labels, head, images[1] if clean else None)
