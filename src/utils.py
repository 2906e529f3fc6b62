"""Run plumbing shared by the entry points: config tree, instantiation, the task wrapper and
the Hydra callbacks that keep an earlier run's record and name a sweep's failed jobs."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import rich.syntax
import rich.tree
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write
from pytorch_lightning import Callback
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only
from rich.console import Console

from src.runs import (
    FAILED_LOG_LINE,
    failed_jobs,
    keep_existing,
    last_checkpoint,
    write_failed_marker,
)

log = logging.getLogger(__name__)

# W&B refuses longer tags.
_WANDB_TAG_LENGTH = 64


def _hydra_job() -> DictConfig | None:
    """Hydra's runtime config, or None outside a Hydra job (tests that call a task directly)."""
    return HydraConfig.get() if HydraConfig.initialized() else None


def in_multirun() -> bool:
    job = _hydra_job()
    return job is not None and job.mode == RunMode.MULTIRUN


def job_overrides() -> list[str]:
    """The job's own command-line overrides (in a sweep: this job's values), or []."""
    job = _hydra_job()
    return list(job.overrides.task) if job is not None else []


def sweep_group() -> str | None:
    """A name shared by the jobs of one sweep (its folder's last two parts: date/time), so a
    logger can group them; None for a single run."""
    if not in_multirun():
        return None
    sweep_dir = Path(_hydra_job().sweep.dir)
    return f"{sweep_dir.parent.parent.name}/{sweep_dir.parent.name}/{sweep_dir.name}"


def run_tags(tags: list[str]) -> list[str]:
    """The config's tags plus the job's overrides, so each job of a sweep says what it varied."""
    return [*tags, *(o[:_WANDB_TAG_LENGTH] for o in job_overrides())]


# For the logger configs: `group: ${sweep_group:}`, `tags: ${run_tags:${tags}}`.
OmegaConf.register_new_resolver("sweep_group", sweep_group, replace=True)
OmegaConf.register_new_resolver("run_tags", lambda tags: run_tags(list(tags)), replace=True)
# For hydra/launcher=slurm: GPUs per node follow the trainer, none for a CPU trainer (SLURM
# refuses a GPU request on a node without GPUs).
OmegaConf.register_new_resolver(
    "slurm_gpus",
    lambda accelerator, devices: int(devices) if accelerator in ("gpu", "cuda") else None,
    replace=True,
)
# For 2.5D data configs: `in_channels: ${context_channels:${.context_slices}}` = 2k + 1 grey
# slices (src.data.context), or times the files' channels given as a second argument.
OmegaConf.register_new_resolver(
    "context_channels", lambda k, channels=1: int(channels) * (2 * int(k) + 1), replace=True
)


@rank_zero_only  # DDP re-runs the command in each process; the config is printed and saved once
def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the resolved config as a tree (one branch per group) and save it beside the run."""
    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    for key, value in cfg.items():
        body = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        tree.add(str(key)).add(rich.syntax.Syntax(body, "yaml"))
    Console().print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        keep_existing(save_to).write_text(OmegaConf.to_yaml(cfg, resolve=True))


class KeepHydraRecord(HydraCallback):
    """Hydra writes its record (``.hydra/``: config, overrides) when a job starts, over the
    record of the run that a run resumed in place (``hydra.run.dir=<run folder>``) continues.
    Before that, point it to a timestamped sibling (``.hydra.<time>/``), as ``keep_existing``
    does for our own files. Hydra offers no setting for this; a run-start callback is its hook.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = config.hydra.output_subdir
        if subdir is None:  # no record written (e.g. the extra processes of a DDP run)
            return
        run_dir = Path(config.hydra.run.dir)
        if (run_dir / subdir).exists():
            with read_write(config.hydra):
                config.hydra.output_subdir = str(
                    keep_existing(run_dir / subdir).relative_to(run_dir)
                )


def instantiate_list(cfg: DictConfig | None, kind: type) -> list:
    """Instantiate every ``_target_`` node of a config group (callbacks, loggers); a node set
    to null on the command line (``callbacks.progress_bar=null``) is left out."""
    objects = []
    for name, node in (cfg or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise TypeError(f"config node '{name}' must have a _target_, got: {node}")
        obj = hydra.utils.instantiate(node)
        if not isinstance(obj, kind):
            raise TypeError(
                f"config node '{name}' built a {type(obj).__name__}, expected a {kind.__name__}"
            )
        objects.append(obj)
    return objects


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    return instantiate_list(cfg, Callback)


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    return instantiate_list(cfg, Logger)


def finish_wandb(failed: bool) -> None:
    """Close a W&B run if one is open, so a failed job never leaves it dangling."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        log.info("Closing the W&B run")
        wandb.finish(exit_code=1 if failed else 0)


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Run a task; on any failure log it, close W&B and end with the output folder named.

    A single run re-raises the error as ``SystemExit(1)`` after logging, so that the run folder
    is the last thing a user reads, not the middle of a traceback (that is in the log file).
    A job of a sweep must not stop the sweep (Hydra aborts on ``SystemExit``, and the Optuna
    sweeper on any exception): it writes a ``FAILED`` marker with its overrides and returns
    None; ``SweepFailures`` names the failed jobs and sets the exit status when the sweep ends.
    """

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        failed = True
        try:
            with ddp_relaunches_this_job():
                result = task(cfg)
            failed = False
            return result
        except Exception as error:
            overrides = " ".join(job_overrides()) or "(none)"
            if not in_multirun():
                # A single run: the traceback goes to the log file, the console gets the
                # error in one line and where the traceback is (all of it with
                # HYDRA_FULL_ERROR=1).
                log_files = log_traceback(full=os.environ.get("HYDRA_FULL_ERROR") == "1")
                shown = error
                if isinstance(error, InstantiationException) and error.__cause__ is not None:
                    shown = error.__cause__  # the target's own error, not Hydra's wrapper
                message = (str(shown).splitlines() or [""])[0]  # OmegaConf adds key details
                print(f"error: {type(shown).__name__}: {message}", file=sys.stderr)
                if log_files:
                    print(f"full traceback: {', '.join(map(str, log_files))}", file=sys.stderr)
                raise SystemExit(1) from error
            log.exception(FAILED_LOG_LINE)  # src.runs.job_status looks for it in the log
            log.error(f"{type(error).__name__}: {error} [overrides: {overrides}]")
            # DDP re-runs the command in each process; one marker.
            rank_zero_only(write_failed_marker)(Path(cfg.paths.output_dir), error, overrides)
            return None
        finally:
            finish_wandb(failed)
            log.info(f"Output folder: {cfg.paths.output_dir}")

    return wrapped


def log_traceback(full: bool = False) -> list[Path]:
    """Log the exception being handled as a failed run (``FAILED_LOG_LINE``, which
    ``src.runs.job_status`` looks for, and the traceback): to every handler but the console
    ones (the log file, a test's capture), or to all of them with ``full``. Returns the log
    files it went to."""
    handlers = logging.getLogger().handlers
    files = [Path(h.baseFilename) for h in handlers if isinstance(h, logging.FileHandler)]
    if full:
        log.exception(FAILED_LOG_LINE)
        return files
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, FAILED_LOG_LINE, None, sys.exc_info()
    )
    for handler in handlers:
        # A plain StreamHandler is a console; files and capture handlers subclass it.
        if type(handler) is not logging.StreamHandler and record.levelno >= handler.level:
            handler.handle(record)
    return files


# What lightning_fabric's _SubprocessScriptLauncher sets in the launching process.
_DDP_LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def ddp_relaunches_this_job() -> Iterator[None]:
    """Make DDP work inside a Hydra multirun (the known Lightning + Hydra pitfall).

    Lightning starts the other DDP processes by re-running ``sys.argv`` with
    ``hydra.run.dir=<HydraConfig's run.dir>``. In a sweep job that command is the whole sweep
    (``-m`` and the value lists: nested sweeps) and run.dir is a fresh ``outputs/<date>``
    folder (stray output). So, for the job's duration, the command is this job's overrides
    alone and run.dir is this job's folder. After the job the process group is destroyed and
    the variables Lightning's launcher set are restored (with ``LOCAL_RANK`` left set, the
    next job would take its processes for started by someone else and wait for them
    forever). Outside a sweep: nothing changes."""
    job = _hydra_job()
    if job is None or job.mode != RunMode.MULTIRUN:
        yield
        return
    argv, run_dir = list(sys.argv), job.run.dir
    environment = {key: os.environ.get(key) for key in _DDP_LAUNCH_VARIABLES}
    with read_write(job):
        job.run.dir = job.runtime.output_dir
    sys.argv = [sys.argv[0], *job.overrides.task]
    try:
        yield
    finally:
        sys.argv = argv
        with read_write(job):
            job.run.dir = run_dir
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class SweepFailures(HydraCallback):
    """At the end of a sweep, name every job that failed (it left a ``FAILED`` marker) and
    exit non-zero, so that scripts notice; the other jobs' results are all kept."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = failed_jobs(sweep_dir)
        if not failed:
            return
        for job, reason in failed.items():
            log.error(f"job {job.name} failed: {reason}")
        log.error(f"{len(failed)} job(s) of the sweep in {sweep_dir} failed (see above)")
        raise SystemExit(1)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """``None``; a ``.ckpt`` file; a run folder (its ``checkpoints/last.ckpt``); or ``last``
    for ``output_dir`` (use with ``hydra.run.dir=<run folder>`` to continue in place)."""
    if ckpt_path is None:
        return None
    path = output_dir if str(ckpt_path) == "last" else Path(ckpt_path)
    if path.is_dir():
        path = last_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path}: no checkpoint at {path} (expected a .ckpt file, a run folder "
            "holding checkpoints/last.ckpt, or 'last' with hydra.run.dir=<run folder>)"
        )
    return path
