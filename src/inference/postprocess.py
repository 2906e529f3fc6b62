"""Per-class clean-up of a predicted label map: keep the largest connected component, fill
holes. Rules are given per class name, e.g. ``{"brain": ["keep_largest_component"]}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from scipy import ndimage


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (empty stays empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    if count < 2:
        return np.zeros(mask.shape, dtype=bool)
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The boolean mask with every enclosed hole filled."""
    return ndimage.binary_fill_holes(mask.astype(bool))


RULES = {"keep_largest_component": keep_largest_component, "fill_holes": fill_holes}


def check_rules(rules: Mapping[str, Sequence[str]], class_names: Sequence[str]) -> None:
    """Raise naming the class or rule when ``rules`` names one that does not exist."""
    foreground = list(class_names[1:])
    for name, steps in rules.items():
        if name not in foreground:
            raise KeyError(f"postprocess rule for unknown class {name!r}; classes: {foreground}")
        unknown = [step for step in steps if step not in RULES]
        if unknown:
            raise KeyError(
                f"postprocess rules {unknown} for class {name!r} are unknown; known: {list(RULES)}"
            )


def postprocess(
    labels: np.ndarray, rules: Mapping[str, Sequence[str]], class_names: Sequence[str]
) -> np.ndarray:
    """Apply each class's rules in order. Pixels a rule removes from a class become
    background; filling holes claims only background pixels, so a structure inside another
    (CSP and LV inside the brain) is never painted over."""
    check_rules(rules, class_names)
    out = labels.copy()
    for name, steps in rules.items():
        label = list(class_names).index(name)
        region = out == label
        for step in steps:
            region = RULES[step](region)
        out[(out == label) & ~region] = 0
        out[region & (out == 0)] = label
    return out
