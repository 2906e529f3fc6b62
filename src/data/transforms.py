"""Ultrasound-specific augmentations as albumentations 2.0 transforms, for uint8 (H, W) B-mode.

Albumentations has generic noise, brightness and crop transforms, but nothing that knows the
physics of a B-mode scan, so these are written here: speckle on the echo envelope, a depth
dependent gain error, acoustic shadows behind bright reflectors and a narrower fan. Each works
in the scanner's own frame: beams fan out from an apex ``APEX_ABOVE`` image heights above the
centre of the top edge (a curvilinear probe), and display grey is log-compressed echo power
over ``DYNAMIC_RANGE_DB`` decibels. Put them before any geometric transform in a pipeline, so
that frame still holds.

None of them moves anatomy, so all are ``ImageOnlyTransform``s: the mask passes through
untouched. All randomness comes from the transform's own ``random_generator`` / ``py_random``,
which ``Compose.set_random_seed`` seeds. (That call gives every transform of a pipeline the
same seed, so transforms with equal probabilities are then applied in lockstep; seeding with
``Compose.set_random_state(np.random.default_rng(seed), random.Random(seed))`` shares one
stream instead.)
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Any

import cv2
import numpy as np
from albumentations.core.pydantic import check_range_bounds, nondecreasing
from albumentations.core.transforms_interface import BaseTransformInitSchema, ImageOnlyTransform
from pydantic import AfterValidator, ConfigDict, Field
from scipy.interpolate import PchipInterpolator
from scipy.special import digamma

# Defaults shared by every transform here, so the presets state them once.
APEX_ABOVE = 0.6  # sector apex above the top edge, in image heights (the phantom: 0.4 to 1)
DYNAMIC_RANGE_DB = 60.0  # echo power range shown from grey 0 to 255 (scanners: 50 to 70 dB)

_DB_PER_NEPER = 10 / math.log(10)  # 10 log10(x) = _DB_PER_NEPER * ln(x)


def _range(low: float, high: float | None = None):
    """A (low, high) pair with both ends in [low, high], in order."""
    return Annotated[
        tuple[float, float],
        AfterValidator(check_range_bounds(low, high)),
        AfterValidator(nondecreasing),
    ]


ApexAbove = Annotated[float, Field(ge=0)]
DynamicRange = Annotated[float, Field(gt=0)]


def _grey_image(data: dict[str, Any], transform: str) -> np.ndarray:
    """The call's image, checked: these transforms model a grayscale B-mode display."""
    image = data["image"]
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(
            f"{transform}: expected a uint8 grayscale (H, W) image, got {image.dtype} {image.shape}"
        )
    return image


@functools.lru_cache(maxsize=16)
def beam_coordinates(height: int, width: int, apex_above: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: depth in pixels along its beam (distance from the apex less the apex's height
    above the image: 0 at the centre of the top edge) and beam angle in radians (0 straight
    down, positive to the right). Cached per image size, so read-only."""
    apex_y = -apex_above * height
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = x - (width - 1) / 2, y - apex_y
    depth = np.hypot(dx, dy) - np.float32(-apex_y)
    angle = np.arctan2(dx, dy)
    for array in (depth, angle):
        array.setflags(write=False)
    return depth, angle


def add_decibels(image: np.ndarray, gain_db: np.ndarray | float, dynamic_range_db: float):
    """Multiply the echo power behind ``image`` by ``10 ** (gain_db / 10)``, per pixel.

    The display shows g = 255 (10 log10 P - floor) / dynamic_range, clipped to [0, 255]. Undoing
    that compression, multiplying P and compressing again is the same as adding
    255 gain_db / dynamic_range to g (the unknown floor cancels), which is how it is computed.
    Pixels at 0 lie an unknown distance below the floor (or outside the fan) and stay 0.
    """
    grey = image.astype(np.float32) + np.float32(255 / dynamic_range_db) * gain_db
    out = np.rint(np.clip(grey, 0, 255)).astype(np.uint8)
    out[image == 0] = 0
    return out


class SpeckleNoise(ImageOnlyTransform):
    """Fresh speckle: the echo power is multiplied by a speckle pattern of ``looks`` looks.

    One look is fully developed speckle: a complex Gaussian scatterer field blurred by the
    point-spread function, whose envelope is Rayleigh and power exponential (unit mean).
    Averaging ``looks`` independent looks (compounding) gives gamma-distributed power with shape
    ``looks``: 1 is the harshest, more is milder. The image is de-log-compressed, multiplied
    and re-compressed (``add_decibels``). The pattern is scaled to unit geometric mean, i.e. its
    mean in decibels is 0, so the mean grey is kept; a unit arithmetic mean would darken the
    display by 10 log10(e) (ln(looks) - digamma(looks)) dB (2.5 dB for one look).

    ``grain`` is the point-spread function's std along the beam and across it, as fractions of
    the image width, so that a preset means the same at every training resolution. The default
    is the real HC18 scans' grain (experiments/phantom_calibration: autocorrelation halved at
    2.4 px along and 4.5 px across the beam in 800 px wide scans, a std of about 1/1.2 of
    that). The beam is taken as vertical, as it is near the middle of the fan.
    """

    class InitSchema(BaseTransformInitSchema):
        model_config = ConfigDict(title="SpeckleNoise")
        dynamic_range_db: DynamicRange
        looks: Annotated[
            tuple[int, int], AfterValidator(check_range_bounds(1)), AfterValidator(nondecreasing)
        ]
        grain: Annotated[tuple[float, float], AfterValidator(check_range_bounds(0))]

    def __init__(
        self,
        looks: tuple[int, int] = (2, 8),
        grain: tuple[float, float] = (0.0025, 0.0048),
        dynamic_range_db: float = DYNAMIC_RANGE_DB,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.looks = looks
        self.grain = grain
        self.dynamic_range_db = dynamic_range_db

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = _grey_image(data, "SpeckleNoise").shape
        looks = int(self.random_generator.integers(self.looks[0], self.looks[1], endpoint=True))
        axial, lateral = (fraction * width for fraction in self.grain)
        power = np.zeros((height, width), np.float32)
        # sigma 0 would make cv2 derive it from the kernel size; a tiny one blurs nothing.
        for _ in range(looks):
            real, imaginary = (
                cv2.GaussianBlur(field, (0, 0), sigmaX=lateral + 1e-6, sigmaY=axial + 1e-6)
                for field in self.random_generator.standard_normal((2, height, width), np.float32)
            )
            look = real**2 + imaginary**2
            power += look / look.mean()
        log_power = np.log(np.maximum(power / looks, 1e-12))
        log_bias = digamma(looks) - math.log(looks)  # E[ln power] of the gamma distribution
        return {"speckle_db": _DB_PER_NEPER * (log_power - np.float32(log_bias))}

    def apply(self, img: np.ndarray, speckle_db: np.ndarray, **params) -> np.ndarray:
        return add_decibels(img, speckle_db, self.dynamic_range_db)


class DepthGain(ImageOnlyTransform):
    """A time-gain compensation (TGC) error: gain that varies smoothly with depth.

    gain(depth) = overall + slope * depth / image height + slider bumps, in decibels, with depth
    measured along the beams from the apex (so equal-gain lines are arcs, as on the scanner).
    ``slope_db`` stands for attenuation the TGC under- or over-corrects (tissue loss in dB is
    linear in depth); ``slider_db`` for the TGC sliders: ``n_sliders`` values uniform in
    [-slider_db, slider_db] at equally spaced depths, joined by scipy's PCHIP, which stays
    smooth and does not overshoot. With ``slider_db=0`` the gain is monotone in depth.
    """

    class InitSchema(BaseTransformInitSchema):
        model_config = ConfigDict(title="DepthGain")
        dynamic_range_db: DynamicRange
        apex_above: ApexAbove
        overall_db: _range(-60, 60)
        slope_db: _range(-60, 60)
        slider_db: float = Field(ge=0)
        n_sliders: int = Field(ge=2)

    def __init__(
        self,
        overall_db: tuple[float, float] = (-3.0, 3.0),
        slope_db: tuple[float, float] = (-6.0, 6.0),
        slider_db: float = 2.0,
        n_sliders: int = 6,
        dynamic_range_db: float = DYNAMIC_RANGE_DB,
        apex_above: float = APEX_ABOVE,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.overall_db = overall_db
        self.slope_db = slope_db
        self.slider_db = slider_db
        self.n_sliders = n_sliders
        self.dynamic_range_db = dynamic_range_db
        self.apex_above = apex_above

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = _grey_image(data, "DepthGain").shape
        depth = beam_coordinates(height, width, self.apex_above)[0] / height
        knots = np.linspace(0.0, float(depth.max()) + 1e-6, self.n_sliders)
        rng = self.random_generator
        sliders = rng.uniform(-self.slider_db, self.slider_db, self.n_sliders)
        gain_at_knots = rng.uniform(*self.overall_db) + rng.uniform(*self.slope_db) * knots
        profile = PchipInterpolator(knots, gain_at_knots + sliders)
        return {"gain_db": profile(depth).astype(np.float32)}

    def apply(self, img: np.ndarray, gain_db: np.ndarray, **params) -> np.ndarray:
        return add_decibels(img, gain_db, self.dynamic_range_db)


class AcousticShadow(ImageOnlyTransform):
    """A shadow behind a bright reflector: echo power loss along the beams below it.

    A pixel of grey >= ``bright_level`` is picked at random; the beams through it within a
    band ``width`` (fraction of the image width, at that depth) wide lose ``attenuation_db``
    beyond its depth, most in the band's middle (a Hann profile: the beam has a width). The
    reflector itself (the bright connected region of that pixel) keeps its echo, and nothing
    above it changes. Without a bright pixel the image is returned as it is.
    """

    class InitSchema(BaseTransformInitSchema):
        model_config = ConfigDict(title="AcousticShadow")
        dynamic_range_db: DynamicRange
        apex_above: ApexAbove
        bright_level: int = Field(ge=1, le=255)
        width: _range(0, 1)
        attenuation_db: _range(0)

    def __init__(
        self,
        bright_level: int = 180,
        width: tuple[float, float] = (0.04, 0.15),
        attenuation_db: tuple[float, float] = (6.0, 20.0),
        dynamic_range_db: float = DYNAMIC_RANGE_DB,
        apex_above: float = APEX_ABOVE,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.bright_level = bright_level
        self.width = width
        self.attenuation_db = attenuation_db
        self.dynamic_range_db = dynamic_range_db
        self.apex_above = apex_above

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        image = _grey_image(data, "AcousticShadow")
        bright = (image >= self.bright_level).astype(np.uint8)
        rows, cols = np.nonzero(bright)
        if not len(rows):
            return {"shadow_db": None}
        height, width = image.shape
        pick = int(self.random_generator.integers(len(rows)))
        row, col = rows[pick], cols[pick]
        _, regions = cv2.connectedComponents(bright, connectivity=8)
        depth, angle = beam_coordinates(height, width, self.apex_above)
        radius = depth[row, col] + self.apex_above * height  # distance from the apex
        half_angle = self.random_generator.uniform(*self.width) * width / 2 / radius
        across = np.clip((angle - angle[row, col]) / max(half_angle, 1e-6), -1, 1)
        profile = 0.5 * (1 + np.cos(np.pi * across))
        behind = (depth > depth[row, col]) & (regions != regions[row, col])
        loss = self.random_generator.uniform(*self.attenuation_db)
        return {"shadow_db": (-loss * profile * behind).astype(np.float32)}

    def apply(self, img: np.ndarray, shadow_db: np.ndarray | None, **params) -> np.ndarray:
        return img if shadow_db is None else add_decibels(img, shadow_db, self.dynamic_range_db)


class SectorEdgeJitter(ImageOnlyTransform):
    """A narrower or shallower fan: its side edges turn inwards, its far edge moves up.

    The fan is found as the non-zero pixels (0.5 % of them at each extreme are ignored, for
    stray text); each side edge turns inwards by a fraction in ``angle_cut`` of the fan's
    angular width, the far arc moves up by a fraction in ``depth_cut`` of the image height,
    and what falls outside goes black with a one-pixel soft edge. Only narrowing: what lies
    beyond the recorded fan was never imaged.

    The mask is not changed, and the edges never cross a labelled pixel (a call with a mask
    limits each cut to keep every foreground pixel, and its grey, as it was). Blacking out
    labelled anatomy would force a choice between two wrong targets: keeping its label
    teaches the network to paint anatomy it cannot see, cutting the label teaches heads that
    end at the fan edge, which the head ellipse (biometry) must not do.
    """

    class InitSchema(BaseTransformInitSchema):
        model_config = ConfigDict(title="SectorEdgeJitter")
        apex_above: ApexAbove
        angle_cut: _range(0, 0.5)
        depth_cut: _range(0, 1)

    def __init__(
        self,
        angle_cut: tuple[float, float] = (0.0, 0.15),
        depth_cut: tuple[float, float] = (0.0, 0.15),
        apex_above: float = APEX_ABOVE,
        p: float = 0.5,
    ):
        super().__init__(p=p)
        self.angle_cut = angle_cut
        self.depth_cut = depth_cut
        self.apex_above = apex_above

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        image = _grey_image(data, "SectorEdgeJitter")
        height, width = image.shape
        depth, angle = beam_coordinates(height, width, self.apex_above)
        radius = depth + np.float32(self.apex_above * height)
        fan = image > 0
        if not fan.any():
            return {"fan_weight": None}
        low, high = np.percentile(angle[fan], (0.5, 99.5))
        far = np.percentile(depth[fan], 99.5)
        rng = self.random_generator
        new_low = low + rng.uniform(*self.angle_cut) * (high - low)
        new_high = high - rng.uniform(*self.angle_cut) * (high - low)
        new_far = far - rng.uniform(*self.depth_cut) * height
        mask = data.get("mask")
        if mask is not None and mask.any():
            labelled = mask > 0
            # One pixel inside each new edge is where its soft edge reaches full weight.
            new_low = min(new_low, float((angle - 1 / radius)[labelled].min()))
            new_high = max(new_high, float((angle + 1 / radius)[labelled].max()))
            new_far = max(new_far, float(depth[labelled].max()) + 1)
        weight = (
            np.clip((angle - new_low) * radius, 0, 1)
            * np.clip((new_high - angle) * radius, 0, 1)
            * np.clip(new_far - depth, 0, 1)
        )
        return {"fan_weight": weight.astype(np.float32)}

    def apply(self, img: np.ndarray, fan_weight: np.ndarray | None, **params) -> np.ndarray:
        if fan_weight is None:
            return img
        return np.rint(img * fan_weight).astype(np.uint8)
