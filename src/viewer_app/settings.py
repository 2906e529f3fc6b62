"""The viewer's settings: what ``python -m src.viewer`` hands the app (JSON in
``SONOSEG_VIEWER``), and how a page predicts (``Inference``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

SETTINGS_ENV = "SONOSEG_VIEWER"  # the launcher hands the app its settings as JSON here


@dataclass(frozen=True)
class Inference:
    """Which checkpoint(s) predict and how: the viewer's own (src.predict's options), or
    those a run was evaluated with, so a run's image shows the prediction it was scored on."""

    ckpt_paths: tuple[str, ...]
    tta_flip: bool = False
    rules: Mapping[str, Sequence[str]] = field(default_factory=dict)
    robust_biometry: bool = False
    source: str = "the viewer's checkpoint"


@dataclass(frozen=True)
class ViewerSettings:
    """What ``python -m src.viewer`` hands the app (JSON in ``SONOSEG_VIEWER``)."""

    model: Inference
    run_dir: str | None = None
    compare_dirs: tuple[str, ...] = ()
    prepared_dir: str | None = None  # the data config's prepared copy: dataset images
    data_class_names: tuple[str, ...] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> ViewerSettings:
        if not text:
            raise ValueError(
                f"no viewer settings ({SETTINGS_ENV} is not set): start the viewer with "
                "`python -m src.viewer ckpt_path=<file.ckpt>` (or `make viewer ARGS=...`)"
            )
        try:
            raw = json.loads(text)
            model = raw.pop("model")
            return cls(
                model=Inference(**{**model, "ckpt_paths": tuple(model["ckpt_paths"])}),
                run_dir=raw.pop("run_dir", None),
                compare_dirs=tuple(raw.pop("compare_dirs", ())),
                prepared_dir=raw.pop("prepared_dir", None),
                data_class_names=_optional_tuple(raw.pop("data_class_names", None)),
                **raw,
            )
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{SETTINGS_ENV} holds no valid viewer settings: {error}") from error


def _optional_tuple(values: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)
