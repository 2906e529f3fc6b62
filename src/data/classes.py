"""The one registry of segmentation class sets: label ids, names, display colours.

A dataset's reader writes labels of one class set; metrics, summaries, reports and overlays
take names and colours from it (``class_set_for`` finds it by the class names a checkpoint
records). A new dataset adds its ``ClassSet`` to ``CLASS_SETS``. How a raw layout encodes
the classes (mask colours, RLE) is its reader's business, not this module's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassSet:
    """Label ids are positions in ``names``; label 0 is background."""

    names: tuple[str, ...]
    display_colours: tuple[RGB, ...]
    # Label ids whose union is the whole head (biometry); empty: no head to measure.
    head_labels: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.names)

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

CLASS_SETS: dict[str, ClassSet] = {"fetal_head": FETAL_HEAD, "hc18": HC18_HEAD}


def class_set_for(names: Sequence[str]) -> ClassSet | None:
    """The registered class set with these names (in any case), or None."""
    wanted = tuple(name.casefold() for name in names)
    return next((known for known in CLASS_SETS.values() if known.names == wanted), None)
