"""Grouped, stratified train/val/test splits and their ``splits.json``.

A subject appears in several images (planes, frames), so folds are made over all rows at
once with a group column (the subject: no subject in two splits) and, optionally, a stratum
column (the fetal head record's plane, HC18's head-circumference tertile: each split keeps
the mix); the dataset's config names both. With ``n_folds`` folds, the test split is fold
``fold``, the validation split is fold ``(fold + 1) % n_folds`` and the training split is
every other fold; cycling ``fold`` over ``0..n_folds-1`` therefore tests every image exactly
once.

Everything here works on a prepared dir's index.csv alone: the split of a dataset, and the
rows evaluation reads (``PreparedSplit``), never need its array cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from src.data.prepared import read_index

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    """Image paths (as in index.csv) per split, and the fold parameters that made them."""

    n_folds: int
    fold: int
    seed: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __getitem__(self, split: str) -> tuple[str, ...]:
        if split not in SPLIT_NAMES:
            raise KeyError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
        return getattr(self, split)

    def to_json(self) -> str:
        record = asdict(self)
        return json.dumps({k: list(v) if k in SPLIT_NAMES else v for k, v in record.items()})

    def write(self, path: Path) -> None:
        """Write ``path``; an existing file is left alone if identical, an error otherwise."""
        path = Path(path)
        text = self.to_json()
        if path.exists():
            if path.read_text() == text:
                return
            raise FileExistsError(f"{path} already holds a different split; not overwriting it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def make_splits(
    rows: pd.DataFrame,
    *,
    n_folds: int,
    fold: int,
    seed: int,
    group_column: str = "subject",
    stratify_column: str | None = None,
) -> Splits:
    """Split ``rows`` (columns image, ``group_column`` and ``stratify_column``) with
    scikit-learn's StratifiedGroupKFold (one stratum for all rows when there is no column)."""
    if n_folds < 3:
        raise ValueError(f"n_folds={n_folds}: need at least 3 folds (test, val and train)")
    if not 0 <= fold < n_folds:
        raise ValueError(
            f"fold={fold} is out of range for n_folds={n_folds}: expected 0..{n_folds - 1}"
        )
    for column in (group_column, stratify_column):
        if column is not None and column not in rows.columns:
            raise ValueError(f"split column {column!r} is not in the index ({list(rows.columns)})")
    n_groups = rows[group_column].nunique()
    if n_groups < n_folds:
        fix = f"set data.n_folds={n_groups}" if n_groups >= 3 else "this data is too small to split"
        raise ValueError(
            f"{n_groups} {group_column} groups cannot fill data.n_folds={n_folds} folds "
            f"(each fold needs its own {group_column}s): {fix}"
        )
    strata = rows[stratify_column] if stratify_column else np.zeros(len(rows))
    counts = pd.Series(strata).value_counts()
    if stratify_column and (counts < n_folds).all():  # scikit-learn's error, named
        raise ValueError(
            f"every {stratify_column} stratum has fewer images than data.n_folds={n_folds} "
            f"({', '.join(f'{k}: {v}' for k, v in counts.items())}): set "
            f"data.n_folds={max(3, int(counts.max()))} or data.stratify_column=null"
        )
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of_row = np.empty(len(rows), dtype=int)
    for k, (_, in_fold) in enumerate(
        folds.split(np.zeros(len(rows)), strata, groups=rows[group_column])
    ):
        fold_of_row[in_fold] = k
    images = rows["image"].to_numpy()
    val_fold = (fold + 1) % n_folds
    return Splits(
        n_folds=n_folds,
        fold=fold,
        seed=seed,
        train=tuple(images[(fold_of_row != fold) & (fold_of_row != val_fold)]),
        val=tuple(images[fold_of_row == val_fold]),
        test=tuple(images[fold_of_row == fold]),
    )


def data_fingerprint(rows: pd.DataFrame) -> str:
    """What identifies the images a split was made of: a hash of the selected index.csv's
    image paths (the same record prepared anywhere gives the same one; another copy of the
    data, another hospital, another selection, another one)."""
    return hashlib.sha256("\n".join(sorted(rows["image"])).encode()).hexdigest()[:16]


# checkpoint["sonoseg_split"]: the split a network was trained on and the data it was made of.
SPLIT_RECORD_KEY = "sonoseg_split"


def split_record(splits: Splits, fingerprint: str) -> dict:
    """Plain values (a checkpoint loads with weights_only): the fold parameters, the image ids
    of each split and the data's fingerprint."""
    return json.loads(splits.to_json()) | {"data_fingerprint": fingerprint}


def splits_of_record(record: dict) -> Splits:
    return Splits(
        n_folds=int(record["n_folds"]),
        fold=int(record["fold"]),
        seed=int(record["seed"]),
        **{split: tuple(record[split]) for split in SPLIT_NAMES},
    )


def read_splits(path: Path, known_images: set[str]) -> Splits:
    """Read a splits.json, checking that its images are known and no image is in two splits."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"splits file {path} not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    expected = ("n_folds", "fold", "seed", *SPLIT_NAMES)
    missing = [key for key in expected if key not in record]
    if missing:
        raise ValueError(f"{path} lacks keys {missing}; expected {list(expected)}")
    lists = {split: record[split] for split in SPLIT_NAMES}
    for split, images in lists.items():
        if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
            raise ValueError(f"{path}: {split!r} must be a list of image paths")
    unknown = sorted({i for images in lists.values() for i in images} - set(known_images))
    if unknown:
        raise ValueError(
            f"{path} names {len(unknown)} images that are not in the dataset's index.csv: "
            f"{unknown[:5]}"
        )
    for split, images in lists.items():
        repeated = sorted(image for image, count in Counter(images).items() if count > 1)
        if repeated:
            raise ValueError(
                f"{path}: {len(repeated)} images are twice in {split!r}: {repeated[:5]}"
            )
    for first, second in combinations(SPLIT_NAMES, 2):
        shared = sorted(set(lists[first]) & set(lists[second]))
        if shared:
            raise ValueError(
                f"{path}: {len(shared)} images are in both {first!r} and {second!r}: {shared[:5]}"
            )
    return Splits(
        n_folds=int(record["n_folds"]),
        fold=int(record["fold"]),
        seed=int(record["seed"]),
        **{split: tuple(images) for split, images in lists.items()},
    )


def selected_rows(prepared_dir: Path, select: Mapping[str, Sequence]) -> pd.DataFrame:
    """The index.csv rows of ``prepared_dir`` whose ``column`` is one of the given values, for
    each column of ``select`` (``data.select``); unknown columns and values are named."""
    rows = read_index(prepared_dir)
    for column, values in select.items():
        if column not in rows.columns:
            raise ValueError(
                f"data.select.{column}: {prepared_dir}/index.csv has no column "
                f"{column!r} (it has {list(rows.columns)})"
            )
        known = sorted(rows[column].astype(str).unique())
        unknown = sorted(set(map(str, values)) - set(known))
        if unknown:
            raise ValueError(
                f"data.select.{column} names unknown values {unknown}; the data has {known}"
            )
        rows = rows[rows[column].astype(str).isin(list(map(str, values)))]
    return rows.reset_index(drop=True)


def read_or_make_splits(
    rows: pd.DataFrame,
    splits_file: Path | None,
    *,
    n_folds: int,
    fold: int,
    seed: int,
    group_column: str,
    stratify_column: str | None,
) -> Splits:
    """The split of ``splits_file`` when given (reproduced exactly, its images checked against
    ``rows``), else the one ``make_splits`` makes."""
    if splits_file is None:
        return make_splits(
            rows,
            n_folds=n_folds,
            fold=fold,
            seed=seed,
            group_column=group_column,
            stratify_column=stratify_column,
        )
    splits = read_splits(splits_file, set(rows["image"]))
    log.info(
        "reproducing the split of %s (n_folds=%d, fold=%d, seed=%d)",
        splits_file,
        splits.n_folds,
        splits.fold,
        splits.seed,
    )
    return splits


@dataclass(frozen=True)
class PreparedSplit:
    """A prepared dataset and its split: the selected index.csv rows of each split and what
    reading and scoring them at the original size needs (no array cache, no input size).

    ``in_channels``: of each image file (2.5D input stacks ``context_slices`` neighbours on
    each side, found by ``volume_column`` and ``slice_column`` in the whole index.csv)."""

    prepared_dir: Path
    rows: pd.DataFrame  # the selected index.csv rows, indexed by image
    splits: Splits
    class_names: tuple[str, ...]
    stratify_column: str | None
    in_channels: int
    context_slices: int
    volume_column: str | None
    slice_column: str | None

    def split_rows(self, split: str) -> pd.DataFrame:
        """index.csv rows of one split, in the split's order (image, mask, subject, pixel
        size, original size and the reader's own columns)."""
        return self.rows.loc[list(self.splits[split])].reset_index(drop=True)
