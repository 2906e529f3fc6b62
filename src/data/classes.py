"""The one registry of segmentation classes: label ids, names, display colours, raw palettes.

Everything else (reader, phantom, metrics, overlays, reports) asks this module, so a
dataset with other classes needs a new ``ClassSet`` here and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ClassSet:
    """Label ids are positions in ``names``; label 0 is background."""

    names: tuple[str, ...]
    display_colours: tuple[RGB, ...]
    # Label ids whose union is the whole head (used by biometry).
    head_labels: tuple[int, ...]

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

# Colours of the raw record's masks -> label id. CSP is green in the three Trans-* planes
# but yellow in the diverse folder; the Pascal VOC export uses the VOC palette.
PALETTES: dict[str, dict[RGB, int]] = {
    "trans": {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2, (0, 0, 255): 3},
    "diverse": {(0, 0, 0): 0, (255, 0, 0): 1, (255, 255, 0): 2, (0, 0, 255): 3},
    "voc": {(0, 0, 0): 0, (128, 0, 0): 1, (0, 128, 0): 2, (128, 128, 0): 3},
}
