"""The one registry of segmentation class sets: label ids, names, display colours.

A dataset's reader writes labels of one class set; metrics, summaries, reports and overlays
take names and colours from it (``class_set_for`` finds it by the class names a checkpoint
records). A new dataset adds its ``ClassSet`` to ``CLASS_SETS``. How a raw layout encodes
the classes (mask colours, RLE) is its reader's business, not this module's.

Two output modes. Multi-class (softmax): one label per pixel, a uint8 label map of label ids.
Multi-label (sigmoid; ``multilabel=True``, classes may overlap, e.g. the bowel loops of
UW-Madison GI): a uint8 *bitmask* map, bit ``k - 1`` set where foreground class ``k`` is
present (``to_bitmask``/``from_bitmask``). The bitmask keeps overlaps exactly through
nearest-neighbour resizing and geometric augmentation, so the prepared dir, the cache and the
transforms handle it as any label map; it becomes (K, H, W) channels only for the loss and the
metrics. Label 0 ("background": no class) is in ``names`` in both modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassSet:
    """Label ids are positions in ``names``; label 0 is background."""

    names: tuple[str, ...]
    display_colours: tuple[RGB, ...]
    # Label ids whose union is the whole head (biometry); empty: no head to measure.
    head_labels: tuple[int, ...] = ()
    # Sigmoid outputs, one per foreground class, masks as bitmasks (see the module docstring).
    multilabel: bool = False
    # The per-case-day score of the UW-Madison GI competition (src.evaluation.uwmgi_metric)
    # applies to this class set's evaluations.
    competition_metric: str | None = None

    def __post_init__(self) -> None:
        if self.multilabel and len(self.names) - 1 > 8:
            raise ValueError(f"a uint8 bitmask holds 8 classes, {self.names} has more")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def num_outputs(self) -> int:
        """Network output channels: a logit per class (softmax), per foreground class
        (sigmoid). What ``data.num_classes`` must say."""
        return len(self.names) - 1 if self.multilabel else len(self.names)

    @property
    def foreground(self) -> tuple[str, ...]:
        return self.names[1:]

    def label(self, name: str) -> int:
        """Label id of a class name in any case (exports spell them "Brain", "CSP")."""
        try:
            return [known.casefold() for known in self.names].index(name.casefold())
        except ValueError:
            raise KeyError(f"unknown class {name!r}; known classes: {self.names}") from None


FETAL_HEAD = ClassSet(
    names=("background", "brain", "csp", "lv"),
    display_colours=((0, 0, 0), (230, 60, 60), (60, 200, 90), (70, 110, 240)),
    head_labels=(1, 2, 3),
)

HC18_HEAD = ClassSet(
    names=("background", "head"),
    display_colours=((0, 0, 0), (230, 60, 60)),
    head_labels=(1,),
)

# LGG brain MRI (Buda et al. 2019): the FLAIR abnormality, one softmax class.
LGG = ClassSet(
    names=("background", "abnormality"),
    display_colours=((0, 0, 0), (250, 200, 40)),
)

# UW-Madison GI tract MRI (Kaggle 2022): overlapping organs, so multi-label.
UWMGI = ClassSet(
    names=("background", "large_bowel", "small_bowel", "stomach"),
    display_colours=((0, 0, 0), (230, 160, 40), (60, 200, 90), (70, 110, 240)),
    multilabel=True,
    competition_metric="uwmgi",
)

CLASS_SETS: dict[str, ClassSet] = {
    "fetal_head": FETAL_HEAD,
    "hc18": HC18_HEAD,
    "uwmgi": UWMGI,
    "lgg": LGG,
}


def to_bitmask(channels: np.ndarray) -> np.ndarray:
    """(K, H, W) booleans (class k + 1 present) -> uint8 (H, W) bitmask, bit k = class k + 1."""
    channels = np.asarray(channels, dtype=bool)
    if channels.ndim != 3 or len(channels) > 8:
        raise ValueError(f"expected (K <= 8, H, W) channels, got shape {channels.shape}")
    weights = (1 << np.arange(len(channels), dtype=np.uint8))[:, None, None]
    return (channels.astype(np.uint8) * weights).sum(axis=0, dtype=np.uint8)


def from_bitmask(bitmask: np.ndarray, num_foreground: int) -> np.ndarray:
    """uint8 (..., H, W) bitmask -> bool (..., K, H, W): channel k = bit k (class k + 1)."""
    bits = np.arange(num_foreground, dtype=np.uint8).reshape(-1, 1, 1)
    return (np.expand_dims(bitmask, -3) >> bits) & 1 == 1


def class_mask(labels: np.ndarray, label: int, multilabel: bool) -> np.ndarray:
    """Where foreground class ``label`` (>= 1) is, in a label map or a bitmask map."""
    if multilabel:
        return (labels >> (label - 1)) & 1 == 1
    return labels == label


def class_set_for(names: Sequence[str]) -> ClassSet | None:
    """The registered class set with these names (in any case), or None."""
    wanted = tuple(name.casefold() for name in names)
    return next((known for known in CLASS_SETS.values() if known.names == wanted), None)


def head_class_set(class_names: Sequence[str]) -> ClassSet | None:
    """The registered class set of these names if it has a head to measure."""
    class_set = class_set_for(class_names)
    return class_set if class_set is not None and class_set.head_labels else None
