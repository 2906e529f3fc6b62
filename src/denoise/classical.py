"""Classical despeckling filters: uint8 (H, W) grey image in, uint8 (H, W) out.

Median, bilateral and non-local means are OpenCV's. SRAD (speckle reducing anisotropic
diffusion, Yu & Acton 2002) is written here by hand: no well-kept Python library has it
(scikit-image and OpenCV do not; the PyPI packages that do are one-off uploads).

Each filter is a frozen dataclass, so its ``repr`` names the class and every parameter:
``cache_key`` is that repr, and the array cache (``src.data.cache``) keys the filtered arrays
by it, so another filter or parameter gets its own cache. ``src.train`` applies the filter
there, once per image; at eval/predict time ``src.inference.prestage.FilterLayer`` applies the
same filter to the same resized image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np


class ClassicalFilter:
    """Base: checks the input and names the filter; subclasses implement ``_filter``."""

    name: ClassVar[str]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 2:
            raise ValueError(
                f"{type(self).__name__} expects a uint8 (H, W) grey image, "
                f"got {image.dtype} {image.shape}"
            )
        return self._filter(image)

    def _filter(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def cache_key(self) -> str:
        """The class and every parameter (the dataclass repr): what the filtered cache is
        keyed by."""
        return repr(self)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class Median(ClassicalFilter):
    """OpenCV's median filter over a ``ksize`` x ``ksize`` window."""

    name: ClassVar[str] = "median"
    ksize: int = 5

    def __post_init__(self) -> None:
        _check(
            self.ksize >= 3 and self.ksize % 2 == 1,
            f"denoiser median: ksize must be odd and >= 3, got {self.ksize}",
        )

    def _filter(self, image: np.ndarray) -> np.ndarray:
        return cv2.medianBlur(image, self.ksize)


@dataclass(frozen=True)
class Bilateral(ClassicalFilter):
    """OpenCV's bilateral filter: averages neighbours within ``sigma_space`` px whose grey
    level is within about ``sigma_color`` of the centre's, so edges survive."""

    name: ClassVar[str] = "bilateral"
    diameter: int = 5
    sigma_color: float = 30.0
    sigma_space: float = 3.0

    def __post_init__(self) -> None:
        _check(
            self.diameter >= 1, f"denoiser bilateral: diameter must be >= 1, got {self.diameter}"
        )
        _check(
            self.sigma_color > 0 and self.sigma_space > 0,
            "denoiser bilateral: sigma_color and sigma_space must be > 0, "
            f"got {self.sigma_color} and {self.sigma_space}",
        )

    def _filter(self, image: np.ndarray) -> np.ndarray:
        return cv2.bilateralFilter(image, self.diameter, self.sigma_color, self.sigma_space)


@dataclass(frozen=True)
class NonLocalMeans(ClassicalFilter):
    """OpenCV's non-local means (``fastNlMeansDenoising``): each pixel becomes the mean of
    pixels whose ``template_window`` patches look alike within ``search_window``; ``h`` is
    the filter strength (grey levels)."""

    name: ClassVar[str] = "nlm"
    h: float = 10.0
    template_window: int = 7
    search_window: int = 21

    def __post_init__(self) -> None:
        _check(self.h > 0, f"denoiser nlm: h must be > 0, got {self.h}")
        for key in ("template_window", "search_window"):
            value = getattr(self, key)
            _check(value >= 3 and value % 2 == 1, f"denoiser nlm: {key} must be odd, >= 3: {value}")

    def _filter(self, image: np.ndarray) -> np.ndarray:
        return cv2.fastNlMeansDenoising(
            image, None, self.h, self.template_window, self.search_window
        )


@dataclass(frozen=True)
class SRAD(ClassicalFilter):
    """Speckle reducing anisotropic diffusion (Yu & Acton, IEEE TIP 2002), written by hand
    (see the module docstring).

    Diffusion is steered by the instantaneous coefficient of variation ``q`` (local
    gradient and Laplacian relative to the intensity): where ``q`` is near the speckle's
    own level ``q0`` (homogeneous tissue) the image is smoothed, where it is well above
    (edges) diffusion stops. Yu & Acton estimate ``q0`` on a homogeneous region chosen by
    hand; here it is the median of ``q`` over the pixels that vary (the flat black outside
    the scan sector has q = 0), re-estimated each iteration: most pixels are speckle, not
    edges, so the median is a robust automatic choice. Explicit 4-neighbour scheme with
    reflecting borders; ``time_step`` <= 1 keeps it stable (the diffusion coefficient is
    at most 1 and the update is ``time_step / 4`` times the divergence).
    """

    name: ClassVar[str] = "srad"
    iterations: int = 30
    time_step: float = 0.5

    def __post_init__(self) -> None:
        _check(self.iterations >= 1, f"denoiser srad: iterations must be >= 1: {self.iterations}")
        _check(
            0 < self.time_step <= 1, f"denoiser srad: time_step must be in (0, 1]: {self.time_step}"
        )

    def _filter(self, image: np.ndarray) -> np.ndarray:
        # Strictly positive intensities: q divides by them.
        intensity = (image.astype(np.float64) + 1.0) / 256.0
        for _ in range(self.iterations):
            padded = np.pad(intensity, 1, mode="edge")
            north = padded[:-2, 1:-1] - intensity
            south = padded[2:, 1:-1] - intensity
            west = padded[1:-1, :-2] - intensity
            east = padded[1:-1, 2:] - intensity
            gradient2 = (north**2 + south**2 + west**2 + east**2) / intensity**2
            laplacian = (north + south + west + east) / intensity
            q2 = np.maximum((0.5 * gradient2 - laplacian**2 / 16) / (1 + laplacian / 4) ** 2, 0.0)
            varying = q2[q2 > 0]
            if varying.size == 0:  # a constant image: nothing to diffuse
                break
            q0_2 = float(np.median(varying))
            coefficient = np.clip(1 / (1 + (q2 - q0_2) / (q0_2 * (1 + q0_2))), 0.0, 1.0)
            # Divergence as Yu & Acton discretise it: the south and east fluxes use the
            # neighbour's coefficient, the north and west ones the pixel's own.
            padded_c = np.pad(coefficient, 1, mode="edge")
            divergence = (
                padded_c[2:, 1:-1] * south
                + padded_c[1:-1, 2:] * east
                + coefficient * (north + west)
            )
            intensity = intensity + self.time_step / 4 * divergence
        return np.clip(np.rint(intensity * 256.0 - 1.0), 0, 255).astype(np.uint8)
