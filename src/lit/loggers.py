"""Loggers that keep what an earlier run wrote."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

log = logging.getLogger(__name__)


class KeepingCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that it never deletes an earlier run's ``metrics.csv``.

    Lightning deletes a ``metrics.csv`` already in the logger's folder, so a run resumed in
    place (``ckpt_path=last hydra.run.dir=<run folder>``) would lose the first run's curves.
    This one writes the resumed run's ``metrics.csv`` and ``hparams.yaml`` beside them, in
    ``resumed-<time>/`` under the first run's folder. ``version`` is a folder name here.
    """

    def __init__(self, save_dir: str, name: str = "csv", version: str = "", **kwargs: Any):
        first = Path(save_dir) / name / version
        if (first / ExperimentWriter.NAME_METRICS_FILE).is_file():
            beside = first / f"resumed-{time.strftime('%Y%m%d-%H%M%S')}"
            version = str(beside.relative_to(Path(save_dir) / name))
            log.info(f"{first} holds an earlier run's metrics; this run's go to {beside}")
        super().__init__(save_dir, name=name, version=version, **kwargs)
