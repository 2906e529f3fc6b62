"""Optuna studies that several sweep processes (or SLURM jobs) fill together.

One home for what the sweeper (``hydra_plugins/sonoseg/optuna_sweeper.py``) and the report
share: how a ``storage`` setting opens one of Optuna's own storages, the record a sweep leaves
of its study (``optuna_study.yaml`` in the sweep folder), which trials count towards
``n_trials``, and the table of a study's trials. Optuna is imported only when a study is opened.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

STUDY_RECORD = "optuna_study.yaml"
# User attributes of a trial, set by the sweeper.
OWNER = "owner"  # "<host>:<pid>:<process start time>" of the sweep process that asked it
JOB_DIR = "job_dir"
# Set on trials that do not count towards n_trials: asked by a sweep process that died before
# telling (marked failed by the next process on that host), or asked when the study was full.
INTERRUPTED = "interrupted"
NOT_RUN = "not_run"


def open_storage(storage: str | None):
    """None: in memory (one process, lost with it); ``<scheme>://...``: an SQL URL (Optuna's
    RDBStorage, e.g. ``sqlite:///study.db``); anything else: a journal file (Optuna's
    JournalStorage with a file backend, safe on a shared file system)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if storage is None:
        return None
    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    path = Path(storage).expanduser()
    if path.is_dir():
        raise ValueError(f"storage={storage}: a folder; expected a journal file or an SQL URL")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def absolute_storage(storage: str | None) -> str | None:
    """The storage as every process of a sweep must name it: a journal file's absolute path."""
    if storage is None or "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def counts_towards_n_trials(trial) -> bool:
    return not (trial.user_attrs.get(INTERRUPTED) or trial.user_attrs.get(NOT_RUN))


def write_study_record(sweep_dir: Path, storage: str, study_name: str) -> Path:
    path = Path(sweep_dir) / STUDY_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"storage": storage, "study_name": study_name}))
    return path


def study_trials(sweep_dir: Path) -> pd.DataFrame | None:
    """The trials of the study a sweep folder recorded (None when it recorded none): number,
    state, value, parameters, job folder and why a trial does not count, if so."""
    import optuna

    record_path = Path(sweep_dir) / STUDY_RECORD
    if not record_path.is_file():
        return None
    record = yaml.safe_load(record_path.read_text())
    if not isinstance(record, dict) or not {"storage", "study_name"} <= record.keys():
        raise ValueError(f"{record_path}: expected the keys storage and study_name")
    study = optuna.load_study(
        study_name=record["study_name"], storage=open_storage(record["storage"])
    )
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "params": " ".join(f"{k}={v}" for k, v in sorted(trial.params.items())),
                "job": attrs.get(JOB_DIR, ""),
                "note": attrs.get(INTERRUPTED) or attrs.get(NOT_RUN) or "",
            }
        )
    table = pd.DataFrame(rows, columns=["trial", "state", "value", "params", "job", "note"])
    table.attrs["study"] = f"{record['study_name']} in {record['storage']}"
    return table
