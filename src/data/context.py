"""2.5D input: a slice and its neighbours in the same volume, stacked as channels.

A volume is the rows of index.csv sharing ``volume_column`` (a case-day), ordered by
``slice_column`` (the slice number; numbers need not be consecutive, neighbours are the
adjacent rows in that order). ``context_slices=k`` gives each slice the k slices before and
after it, 2k + 1 channels, the slice itself in the middle. At a volume's edge the missing
neighbours repeat the edge slice (the slice itself), so every input has 2k + 1 channels and
no slice of another volume leaks in. Used by the training Dataset (on the single-channel
array cache) and by eval/predict (on the prepared images), so both stack alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def context_ids(
    rows: pd.DataFrame, volume_column: str, slice_column: str, context_slices: int
) -> dict[str, list[str]]:
    """Per ``image`` of ``rows``: the 2k + 1 image ids of its channels, in slice order."""
    if context_slices < 0:
        raise ValueError(f"data.context_slices must be >= 0, got {context_slices}")
    for column in (volume_column, slice_column):
        if column not in rows.columns:
            raise ValueError(
                f"2.5D input needs index.csv column {column!r} (data.volume_column / "
                f"data.slice_column); the index has {list(rows.columns)}"
            )
    out: dict[str, list[str]] = {}
    for _, volume in rows.groupby(volume_column, sort=False):
        ordered = volume.sort_values(slice_column, kind="stable")["image"].tolist()
        duplicated = volume[slice_column][volume[slice_column].duplicated()].tolist()
        if duplicated:
            raise ValueError(
                f"volume {volume[volume_column].iat[0]} has slice numbers {duplicated} twice"
            )
        last = len(ordered) - 1
        for i, image in enumerate(ordered):
            out[image] = [
                ordered[min(max(i + offset, 0), last)]
                for offset in range(-context_slices, context_slices + 1)
            ]
    return out


def stack_channels(slices: Sequence[np.ndarray]) -> np.ndarray:
    """Single-channel uint8 (H, W) slices -> (H, W, C) channels-last; one slice stays (H, W)."""
    if len(slices) == 1:
        return np.asarray(slices[0])
    return np.stack([np.asarray(s) for s in slices], axis=-1)
