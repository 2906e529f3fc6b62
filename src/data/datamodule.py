"""One LightningDataModule for every dataset: raw data -> prepared dir -> array cache.

Thin on purpose: reading a raw layout is the dataset's reader's job (``src.data.readers``,
chosen in conf/data), decoding and resizing ``cache``'s, splitting ``splits``'s; this module
only decides where things live and wires them to DataLoaders. It knows no dataset: the
class set comes from the reader, the split columns and row selection from the config, and a
synthetic source (the phantom) is a generator the config hands in. The record and its split
come before any cache (``prepare_record``, ``split_source``): evaluation at the original
size reads no cache.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from src.data.cache import ImageFilter, build_cache, cache_dir_for, open_cache
from src.data.classes import from_bitmask
from src.data.context import context_ids, stack_channels
from src.data.gpu_augment import DevicePath, GpuAugment
from src.data.images import image_array
from src.data.prepared import (
    Reader,
    build_dir_atomically,
    copy_versions,
    hold_copy,
    in_use_elsewhere,
    locked,
    next_version,
    read_index,
    remove_unused_versions,
    why_outdated,
)
from src.data.splits import (
    SPLIT_NAMES,
    PreparedSplit,
    Splits,
    data_fingerprint,
    read_or_make_splits,
    selected_rows,
    split_record,
)

log = logging.getLogger(__name__)

Transform = Callable[..., dict]
SYNTHETIC_KEYS = ("root", "generate")


def to_sample(
    image: np.ndarray, mask: np.ndarray, image_id: str, multilabel_classes: int | None = None
) -> dict:
    """uint8 (H, W) or channels-last (H, W, C) image and label map -> the batch item:
    float [0, 1] (1, H, W) or (C, H, W), int64 (H, W). Multi-label data
    (``multilabel_classes`` = K foreground classes): the mask is a bitmask map
    (``src.data.classes``) and becomes float (K, H, W) 0/1 channels, overlaps kept."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(
            f"{image_id}: expected a uint8 (H, W) or (H, W, C) image after the transform, "
            f"got {image.dtype} {image.shape}"
        )
    if multilabel_classes is not None:
        target = torch.from_numpy(from_bitmask(mask, multilabel_classes)).float()
    else:
        target = torch.from_numpy(mask.astype(np.int64))
    return {"image": torch.from_numpy(image_array(image)), "mask": target, "id": image_id}


class CachedSegmentationDataset(Dataset):
    """Rows of an array cache, optionally augmented (image and mask together).

    A row may be a sequence of cache rows (2.5D, ``src.data.context``): those single-channel
    images are stacked as channels, the mask is the middle one's. ``multilabel_classes``: see
    ``to_sample``."""

    def __init__(
        self,
        cache_dir: Path,
        rows: Sequence[int | Sequence[int]],
        ids: Sequence[str],
        transform: Transform | None = None,
        multilabel_classes: int | None = None,
    ):
        self.cache_dir = cache_dir
        self.rows = list(rows)
        self.ids = list(ids)
        self.transform = transform
        self.multilabel_classes = multilabel_classes
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._opened_in_pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _open_in_this_process(self) -> tuple[np.ndarray, np.ndarray]:
        """Open the memory maps, and seed the augmentation, once per (worker) process.

        Pickling an open memmap to a worker would copy the whole array, so each process opens
        its own. Albumentations 2.x draws from a generator of its own that ``seed_everything``
        does not reach and that forked workers would share, so it is reseeded from torch's
        per-process seed: reproducible under a fixed seed, different per worker and epoch.
        The whole pipeline shares one stream: ``Compose.set_random_seed`` would give every
        transform the same seed, so transforms with equal ``p`` would switch on together.
        """
        if self._opened_in_pid != os.getpid():
            images, masks, _ = open_cache(self.cache_dir)
            self._arrays = (images, masks)
            self._opened_in_pid = os.getpid()
            if self.transform is not None:
                seed = torch.initial_seed() % 2**32
                self.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return self._arrays

    def __getitem__(self, i: int) -> dict:
        images, masks = self._open_in_this_process()
        row = self.rows[i]
        if isinstance(row, int | np.integer):
            image, mask = np.array(images[row]), np.array(masks[row])
        else:
            image = stack_channels([images[r] for r in row])
            mask = np.array(masks[row[len(row) // 2]])
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return to_sample(image, mask, self.ids[i], self.multilabel_classes)


class SegmentationDataModule(pl.LightningDataModule):
    """Segmentation data: batches of ``image`` (B, C, H, W) float32 in [0, 1] (C: the
    reader's ``in_channels``), ``mask``
    (B, H, W) int64 labels of the reader's class set, ``id`` (list of index.csv image paths).

    ``root`` is the data as downloaded and ``reader`` turns it into a prepared copy in
    ``<cache_dir>/<root name>-<hash of the resolved root>``, made once and made again when the
    root's listing or the reader changed since. Splits group rows by ``group_column`` and
    stratify by ``stratify_column`` (None: no strata); ``select`` keeps the rows whose
    ``column`` is one of the given values (a None list keeps all). ``synthetic`` (``root``,
    ``generate``) names the one location where missing data is generated (``generate(out)``,
    the phantom); any other missing ``root`` is an error, never a silent switch to fake data.
    ``denoise``: a classical despeckling filter applied to every cached image (its own cache).
    Slices of volumes (``volume_column``, ordered by ``slice_column``): ``context_slices=k``
    stacks the k neighbours on each side as channels (``src.data.context``); ``drop_empty``
    leaves the training slices without any foreground out (val and test never: both settings
    are scored on the same slices). Multi-label class sets give (B, K, H, W) float masks.
    Generating, preparing and caching are locked, so concurrent runs (sweeps, nodes sharing a
    file system) do each once.

    The defaults are conf/data/common.yaml's (``denoise``: its value without a ``denoiser``
    group); ``num_classes``, which each dataset sets, and ``splits_out`` and
    ``train_transform``, which the config takes from the run, have none.
    """

    def __init__(
        self,
        root: str | Path,
        cache_dir: str | Path,
        reader: Reader,
        num_classes: int,
        splits_out: str | Path | None,
        train_transform: Transform | None,
        image_size: Sequence[int] = (256, 384),
        batch_size: int = 8,
        num_workers: int = 4,
        pin_memory: bool = True,
        n_folds: int = 5,
        fold: int = 0,
        seed: int = 0,
        splits_file: str | Path | None = None,
        group_column: str = "subject",
        stratify_column: str | None = None,
        select: Mapping[str, Sequence[str] | None] | None = None,
        synthetic: Mapping | None = None,
        in_channels: int = 1,
        denoise: ImageFilter | None = None,
        volume_column: str | None = None,
        slice_column: str | None = None,
        context_slices: int = 0,
        drop_empty: bool = False,
        cache_device: str = "cpu",
    ):
        super().__init__()
        self.reader = reader
        self.class_set = reader.class_set
        # Written once in the data config and interpolated by the model config; checked here
        # so a wrong override fails before a network of the wrong shape is built. Network
        # outputs: a logit per class (softmax) or per foreground class (multi-label sigmoid).
        # 2.5D input (context_slices=k) stacks 2k + 1 slices of the reader's channels.
        expected = self.class_set.num_outputs
        channels = reader.in_channels * (2 * context_slices + 1)
        if in_channels != channels or num_classes != expected:
            raise ValueError(
                f"data.in_channels={in_channels}, data.num_classes={num_classes}: the "
                f"{reader.name} data with data.context_slices={context_slices} has {channels} "
                f"input channel(s) and {expected} network outputs for classes "
                f"{self.class_set.names}"
                + (" (multi-label: one per foreground class)" if self.class_set.multilabel else "")
            )
        if context_slices and not (volume_column and slice_column):
            raise ValueError(
                f"data.context_slices={context_slices} needs data.volume_column and "
                "data.slice_column (which index.csv columns group and order the slices)"
            )
        self.context_slices = int(context_slices)
        # Training slices without any foreground are left out (val and test never are, so
        # scores stay comparable): the UW-Madison "keep or drop empty slices" question.
        self.drop_empty = bool(drop_empty)
        self.in_channels = in_channels
        # index.csv columns naming a slice's volume (patient, case-day) and its position in
        # it: per-volume metrics and neighbouring-slice context use them; None: 2D images.
        self.volume_column = volume_column
        self.slice_column = slice_column
        if isinstance(image_size, int | float | str) or len(image_size) != 2:
            shown = image_size if isinstance(image_size, int | float | str) else list(image_size)
            raise ValueError(
                f"data.image_size must be [height, width], got {shown} "
                "(e.g. data.image_size=[128,128])"
            )
        self.root = Path(root)
        self.cache_dir = Path(cache_dir)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.n_folds = n_folds
        self.fold = fold
        self.seed = seed
        self.splits_file = Path(splits_file) if splits_file else None
        self.splits_out = Path(splits_out) if splits_out else None
        self.train_transform = train_transform
        # The GPU data path (src.data.gpu_augment): the cache on the device and/or augmentation
        # of whole batches there (augmentation=gpu); None when neither is asked for.
        self.device_path = DevicePath.create(cache_device, train_transform)
        self.group_column = group_column
        self.stratify_column = stratify_column
        self.select = {
            column: list(values) for column, values in (select or {}).items() if values is not None
        }
        self.denoise = denoise
        self.synthetic = dict(synthetic) if synthetic is not None else None
        if self.synthetic is not None and set(self.synthetic) != set(SYNTHETIC_KEYS):
            raise ValueError(
                f"data.synthetic must have the keys {', '.join(SYNTHETIC_KEYS)} (where, and the "
                f"generator that writes a raw record there); got {sorted(self.synthetic)}"
            )
        self._split: PreparedSplit | None = None
        self._datasets: dict[str, CachedSegmentationDataset] = {}
        self._prepared_dir: Path | None = None  # the version in use, once prepared
        self._hold = None  # the shared lock that says this process uses it (hold_copy)

    def __getstate__(self) -> dict:
        """Picklable (worker processes, copies): the hold stays with this process."""
        return {**self.__dict__, "_hold": None}

    @property
    def num_classes(self) -> int:
        return self.class_set.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.class_set.names

    @property
    def base_prepared_dir(self) -> Path:
        """Keyed by the resolved root, so two records with the same folder name do not mix."""
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:10]
        return self.cache_dir / f"{self.root.name}-{digest}"

    @property
    def prepared_dir(self) -> Path:
        """The prepared copy this DataModule uses (after ``prepare_record``), else the newest
        one of its root (``copy_versions``)."""
        if self._prepared_dir is not None:
            return self._prepared_dir
        versions = copy_versions(self.base_prepared_dir)
        return versions[-1] if versions else self.base_prepared_dir

    @property
    def is_synthetic(self) -> bool:
        """Whether ``root`` is the synthetic source's location (the only place data is made)."""
        synthetic_root = self.synthetic and Path(self.synthetic["root"]).resolve()
        return bool(synthetic_root) and self.root.resolve() == synthetic_root

    @property
    def splits(self) -> Splits | None:
        """The images of each split (None before ``split_source``)."""
        return self._split.splits if self._split is not None else None

    def split_record(self) -> dict | None:
        """The split in use and the fingerprint of the data it was made of (None before
        ``split_source``), for the checkpoint (``src.data.splits.split_record``)."""
        if self._split is None:
            return None
        return split_record(self._split.splits, data_fingerprint(self._split.rows))

    def check_network(self, class_names: Sequence[str], in_channels: int, source: object) -> None:
        """Refuse a network (``source``: where it comes from) trained on other classes or
        taking another number of input channels than this data gives."""
        if tuple(self.class_names) != tuple(class_names):
            raise ValueError(
                f"{source} was trained on classes {tuple(class_names)}, the "
                f"data config has {tuple(self.class_names)}"
            )
        if self.in_channels != in_channels:
            raise ValueError(
                f"{source} takes {in_channels} input channel(s), the "
                f"data config's images have {self.in_channels}"
            )

    def prepare_data(self) -> None:
        self.prepare_record()
        build_cache(
            self.prepared_dir,
            self.image_size,
            # Multi-label masks are bitmasks: values up to 2^K - 1 for K foreground classes.
            num_classes=(
                1 << self.class_set.num_outputs if self.class_set.multilabel else self.num_classes
            ),
            denoise=self.denoise,
            in_channels=self.reader.in_channels,  # per file; 2.5D stacks them in the Dataset
        )

    def prepare_record(self) -> None:
        """The raw record (generated where ``synthetic`` allows it) and its prepared copy,
        prepared again when outdated: all that the split and evaluation need, no cache."""
        if not self.root.exists():
            self._generate_synthetic()
        base = self.base_prepared_dir
        if self._hold is not None:  # our own hold must not count as another process's
            self._hold.close()
            self._hold = None
        with locked(base):
            current = self.prepared_dir if self._prepared_dir is None else self._prepared_dir
            outdated = why_outdated(self.root, current, self.reader)
            if outdated is not None:
                exists = current.exists()
                if exists and in_use_elsewhere(current):
                    # A running process reads it (its cache too): new content goes beside it.
                    current = next_version(base)
                    log.warning(
                        "%s: %s; the prepared copy is in use: preparing %s",
                        self.root,
                        outdated,
                        current,
                    )
                    exists = False
                elif exists:
                    log.warning("%s: %s; re-preparing %s", self.root, outdated, current)
                else:
                    log.info("preparing %s into %s", self.root, current)
                self.reader.prepare(self.root, current, overwrite=exists)
            remove_unused_versions(base, keep=current)
            self._prepared_dir = current
            self._hold = hold_copy(current)

    def _generate_synthetic(self) -> None:
        if not self.is_synthetic:
            allowed = (
                f"; synthetic data is generated only at data.synthetic.root="
                f"{self.synthetic['root']}"
                if self.synthetic
                else ", or use data=phantom for synthetic data"
            )
            raise FileNotFoundError(
                f"data root {self.root} does not exist; point data.root at the downloaded "
                f"{self.reader.name} data{allowed}"
            )
        with locked(self.root):
            if self.root.exists():  # generated by another process while this one waited
                return
            log.warning(
                "data root %s does not exist: generating SYNTHETIC data there (%s). "
                "Results on it say nothing about real scans.",
                self.root,
                self.synthetic["generate"],
            )
            build_dir_atomically(self.root, self.synthetic["generate"])

    def split_source(self) -> PreparedSplit:
        """The selected index.csv rows and their split, read from ``splits_file`` or made, and
        written to ``splits_out``; once per DataModule (fit then test must not change it). Needs
        the prepared copy (``prepare_record``), not the array cache."""
        if self._split is not None:
            return self._split
        if self.is_synthetic:
            log.warning("data: SYNTHETIC data at %s", self.root)
        rows = selected_rows(self.prepared_dir, self.select)
        splits = read_or_make_splits(
            rows,
            self.splits_file,
            n_folds=self.n_folds,
            fold=self.fold,
            seed=self.seed,
            group_column=self.group_column,
            stratify_column=self.stratify_column,
        )
        unused = len(rows) - sum(len(splits[s]) for s in SPLIT_NAMES)
        if unused:
            log.warning("%d images of %s are in no split", unused, self.prepared_dir)
        if self.splits_out is not None:
            self._write_splits(splits)
        self._split = PreparedSplit(
            prepared_dir=self.prepared_dir,
            rows=rows.set_index("image", drop=False),
            splits=splits,
            class_names=self.class_names,
            stratify_column=self.stratify_column,
            in_channels=self.reader.in_channels,  # per file; 2.5D stacks context_slices
            context_slices=self.context_slices,
            volume_column=self.volume_column,
            slice_column=self.slice_column,
        )
        return self._split

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:  # fit then test call setup twice
            return
        splits = self.split_source().splits
        cache_dir = cache_dir_for(
            self.prepared_dir, self.image_size, self.denoise, self.reader.in_channels
        )
        _, cached_masks, cached_ids = open_cache(cache_dir)
        row_of = {image: row for row, image in enumerate(cached_ids)}
        channels_of = None
        if self.context_slices:  # neighbours from the whole index: a selection cuts no volume
            channels_of = context_ids(
                read_index(self.prepared_dir),
                self.volume_column,
                self.slice_column,
                self.context_slices,
            )
        multilabel = self.class_set.num_outputs if self.class_set.multilabel else None
        for split in SPLIT_NAMES:
            ids = list(splits[split])
            if split == "train" and self.drop_empty:
                kept = [i for i in ids if cached_masks[row_of[i]].any()]
                log.info("data.drop_empty: %d of %d training slices kept", len(kept), len(ids))
                ids = kept
            rows_of_ids = (
                [row_of[i] for i in ids]
                if channels_of is None
                else [tuple(row_of[c] for c in channels_of[i]) for i in ids]
            )
            transform = self.train_transform if split == "train" else None
            if isinstance(transform, GpuAugment):  # applied to whole batches on the device
                transform = None
            self._datasets[split] = CachedSegmentationDataset(
                cache_dir, rows_of_ids, ids, transform, multilabel
            )
        log.info(
            "split sizes: %s",
            {split: len(dataset) for split, dataset in self._datasets.items()},
        )

    @rank_zero_only
    def _write_splits(self, splits: Splits) -> None:
        splits.write(self.splits_out)
        log.info("split written to %s", self.splits_out)

    def dataset(self, split: str) -> CachedSegmentationDataset:
        """A split's dataset (after ``setup``), e.g. for denoiser training pairs."""
        if not self._datasets:
            raise RuntimeError("call setup() before asking for a split's dataset")
        return self._datasets[split]

    def split_rows(self, split: str) -> pd.DataFrame:
        """index.csv rows of one split (``PreparedSplit.split_rows``)."""
        if self._split is None:
            raise RuntimeError("call setup() or split_source() before asking for split rows")
        return self._split.split_rows(split)

    def test_image_info(self) -> dict[str, dict]:
        """Per test image id: its index.csv row (JSON-ready, missing pixel size as None)."""
        rows = self.split_rows("test")
        return {
            row["image"]: {
                key: None if isinstance(value, float) and math.isnan(value) else value
                for key, value in row.items()
                if key != "image"
            }
            for row in rows.astype(object).to_dict("records")
        }

    def _loader(self, split: str) -> DataLoader:
        """Under DDP, val and test see every image exactly once: Lightning's padding
        DistributedSampler would repeat images to even out the processes and bias every mean,
        and Lightning keeps a sampler that already is a DistributedSampler. (Training keeps
        Lightning's, whose equal batch counts DDP's gradient sync needs.)"""
        dataset = self._datasets[split]
        if self.device_path is not None:
            dataset = self.device_path.loader_dataset(dataset)
        training = split == "train"
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=training,
            sampler=(
                UnrepeatedDistributedSampler(dataset, shuffle=False)
                if distributed and not training
                else None
            ),
            drop_last=training and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            # Pinning only helps host-to-GPU copies; on a CPU-only machine torch warns.
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.device_path is None:
            return batch
        training = self.trainer is not None and self.trainer.training
        return self.device_path(batch, self.trainer.strategy.root_device, training)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
