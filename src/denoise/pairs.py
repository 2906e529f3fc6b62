"""Training pairs for denoisers: ``{"image": noisy, "target": clean, "id"}``, both float
(1, H, W) in [0, 1], per split (train, val, test). Three sources:

- ``PhantomPairs``: the phantom rendered with and without speckle (``render_scan(...,
  clean=True)``): true clean targets, since the renderer knows the tissue map.
- ``SpeckledPairs``: self-supervised, from any dataset: the target is the image as it is,
  the input the image times synthetic multiplicative speckle (``add_speckle``).
- ``FolderPairs``: paired folders the user points to (same file names in both).

Images are brought to ``image_size`` as the segmentation cache does (``resize_image``), so
a denoiser trained here sees what it will see in front of a segmenter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from src.data.cache import resize_image
from src.data.images import IMAGE_SUFFIXES
from src.synthetic.phantom import render_scan, speckle_envelope
from src.synthetic.record import REAL_SIZE

SPLITS = ("train", "val", "test")
# As the phantom record draws them (src.synthetic.record): about the real record's shares of
# images showing CSP / LV, and its pixel sizes at the real width.
_CSP_RATE, _LV_RATE, _PIXEL_MM = 0.5, 0.4, (0.07, 0.33)


def _as_float(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0).unsqueeze(0)


class PairDataset(Dataset):
    """Fixed pairs held in memory as uint8 (N, H, W) arrays."""

    def __init__(self, noisy: np.ndarray, clean: np.ndarray, ids: Sequence[str]) -> None:
        if noisy.shape != clean.shape or noisy.ndim != 3 or len(ids) != len(noisy):
            raise ValueError(
                f"pairs must be two (N, H, W) arrays of one shape with N ids, got "
                f"{noisy.shape}, {clean.shape} and {len(ids)} ids"
            )
        self.noisy, self.clean, self.ids = noisy, clean, list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": _as_float(self.noisy[i]),
            "target": _as_float(self.clean[i]),
            "id": self.ids[i],
        }


class PhantomPairs:
    """``sizes[split]`` phantom scans per split, rendered at ``render_size`` (width,
    height; the real 959 x 661 by default) with and without speckle, resized to
    ``image_size`` (height, width). Scan i of a split is drawn from the seed
    ``(seed, split, i)``, so the splits never share a scan and a run is reproducible."""

    def __init__(
        self,
        image_size: Sequence[int],
        sizes: Mapping[str, int] | None = None,
        render_size: Sequence[int] = (959, 661),
        seed: int = 0,
    ) -> None:
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.sizes = dict(sizes or {"train": 96, "val": 16, "test": 16})
        if set(self.sizes) != set(SPLITS) or min(self.sizes.values()) < 1:
            raise ValueError(
                f"phantom pairs: sizes must give each of {SPLITS} >= 1, got {self.sizes}"
            )
        self.render_size = (int(render_size[0]), int(render_size[1]))
        self.seed = seed

    def splits(self) -> dict[str, Dataset]:
        return {split: self._render(split) for split in SPLITS}

    def _render(self, split: str) -> PairDataset:
        width, height = self.render_size
        noisy, clean, ids = [], [], []
        for i in range(self.sizes[split]):
            rng = np.random.default_rng([self.seed, SPLITS.index(split), i])
            scan = render_scan(
                rng,
                width,
                height,
                has_csp=bool(rng.random() < _CSP_RATE),
                has_lv=bool(rng.random() < _LV_RATE),
                pixel_size_mm=float(rng.uniform(*_PIXEL_MM)) * REAL_SIZE[0] / width,
                clean=True,
            )
            noisy.append(resize_image(scan.image, self.image_size))
            clean.append(resize_image(scan.clean, self.image_size))
            ids.append(f"phantom-{split}-{i:04d}")
        return PairDataset(np.stack(noisy), np.stack(clean), ids)


def add_speckle(
    image: np.ndarray, rng: np.random.Generator, looks: int, grain_px: Sequence[float]
) -> np.ndarray:
    """``image`` (H, W) float in [0, 1] times multiplicative speckle, clipped to [0, 1].

    The speckle is an intensity field of mean 1 and variance ``1 / looks``: the mean of
    ``looks`` squared Rayleigh envelopes (the phantom's ``speckle_envelope`` of unit power),
    its grains blurred by a Gaussian of ``grain_px`` = (std along rows, along columns)."""
    field = np.zeros(image.shape, np.float32)
    unit_power = np.ones(image.shape, np.float32)
    for _ in range(looks):
        field += speckle_envelope(rng, unit_power, *grain_px) ** 2
    return np.clip(image * field / looks, 0.0, 1.0)


class SpeckledDataset(Dataset):
    """Items of ``base`` (``{"image", "id"}``) as pairs: speckled input, the image as target.
    ``fixed``: the same speckle for an item every time (validation, test); else new speckle
    on every draw from torch's generator (seeded per run and worker by Lightning)."""

    def __init__(
        self, base: Dataset, looks: int, grain_px: Sequence[float], seed: int, fixed: bool
    ) -> None:
        self.base, self.looks, self.grain_px = base, looks, tuple(grain_px)
        self.seed, self.fixed = seed, fixed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        target = item["image"]
        if self.fixed:
            rng = np.random.default_rng([self.seed, i])
        else:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        noisy = add_speckle(target[0].numpy(), rng, self.looks, self.grain_px)
        return {"image": torch.from_numpy(noisy).unsqueeze(0), "target": target, "id": item["id"]}


class SpeckledPairs:
    """Self-supervised pairs from the splits of a segmentation data module (any dataset: its
    ``prepare_data``, ``setup`` and ``dataset(split)``), so a denoiser trained on fold k's
    train split never sees fold k's test images."""

    def __init__(
        self, data, looks: int = 4, grain_px: Sequence[float] = (1.0, 3.0), seed: int = 0
    ) -> None:
        if looks < 1 or len(grain_px) != 2 or min(grain_px) <= 0:
            raise ValueError(
                f"speckled pairs: looks must be >= 1 and grain_px two stds > 0, got {looks} "
                f"and {list(grain_px)}"
            )
        self.data, self.looks, self.grain_px, self.seed = data, looks, tuple(grain_px), seed

    def splits(self) -> dict[str, Dataset]:
        self.data.prepare_data()
        self.data.setup()
        return {
            split: SpeckledDataset(
                self.data.dataset(split), self.looks, self.grain_px, self.seed, split != "train"
            )
            for split in SPLITS
        }


class FolderPairs:
    """Pairs of same-named images in ``noisy_dir`` and ``clean_dir`` (grey or colour, read
    as grey, resized to ``image_size``), split at random (``seed``) by the fractions."""

    def __init__(
        self,
        noisy_dir: str | Path,
        clean_dir: str | Path,
        image_size: Sequence[int],
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.noisy_dir, self.clean_dir = Path(noisy_dir), Path(clean_dir)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        if not (val_fraction > 0 and test_fraction > 0 and val_fraction + test_fraction < 1):
            raise ValueError(
                "folder pairs: val_fraction and test_fraction must be > 0 and leave images to "
                f"train on, got {val_fraction} and {test_fraction}"
            )
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.seed = seed

    def _names(self) -> list[str]:
        for key, folder in (("noisy_dir", self.noisy_dir), ("clean_dir", self.clean_dir)):
            if not folder.is_dir():
                raise FileNotFoundError(f"folder pairs: {key} {folder} is not a folder")
        names = sorted(
            p.name
            for p in self.noisy_dir.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not names:
            raise ValueError(
                f"folder pairs: noisy_dir {self.noisy_dir} holds no image "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
        unmatched = [name for name in names if not (self.clean_dir / name).is_file()]
        if unmatched:
            raise ValueError(
                f"folder pairs: {len(unmatched)} image(s) of noisy_dir have no file of the same "
                f"name in clean_dir {self.clean_dir}: {unmatched[:5]}"
            )
        return names

    def _read(self, path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"folder pairs: cannot decode {path} as an image")
        return image

    def splits(self) -> dict[str, Dataset]:
        names = self._names()
        order = np.random.default_rng(self.seed).permutation(len(names))
        counts = {split: max(1, round(f * len(names))) for split, f in self.fractions.items()}
        if len(names) - sum(counts.values()) < 1:
            raise ValueError(
                f"folder pairs: {len(names)} pairs are too few for a train, val and test split"
            )
        bounds = {"val": (0, counts["val"]), "test": (counts["val"], sum(counts.values()))}
        bounds["train"] = (sum(counts.values()), len(names))
        datasets = {}
        for split in SPLITS:
            chosen = [names[i] for i in order[slice(*bounds[split])]]
            noisy, clean = [], []
            for name in chosen:
                a, b = self._read(self.noisy_dir / name), self._read(self.clean_dir / name)
                if a.shape != b.shape:
                    raise ValueError(
                        f"folder pairs: {self.noisy_dir / name} is {a.shape[1]}x{a.shape[0]} but "
                        f"{self.clean_dir / name} is {b.shape[1]}x{b.shape[0]}"
                    )
                noisy.append(resize_image(a, self.image_size))
                clean.append(resize_image(b, self.image_size))
            datasets[split] = PairDataset(np.stack(noisy), np.stack(clean), chosen)
        return datasets
