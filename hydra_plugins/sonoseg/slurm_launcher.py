"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher, waiting for every job.

The plugin's launcher collects the results in job order and raises at the first job that SLURM
ended (cancelled, out of time, node failure): the sweep stops there, says nothing of the jobs
after it, and writes none of the FAILED records that a local sweep writes. This one waits for
all of them, gives a job that SLURM ended a FAILED marker (``src.runs``) with its SLURM state
and log, and adds the log to the marker of a job that raised; ``src.utils.SweepFailures`` then
names them and exits non-zero, as for a local sweep. Only ``launch`` is replaced; each job runs
the plugin's own ``__call__``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf, open_dict

from src.runs import failed_marker_path, write_failed_marker

log = logging.getLogger(__name__)

# Launcher keys that configure the executor itself rather than each job's sbatch settings.
_EXECUTOR_KEYS = ("submitit_folder", "max_num_timeout")


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        import submitit  # lazily, as the plugin does: Hydra imports every plugin at start-up

        settings = {k: v for k, v in self.params.items() if k not in _EXECUTOR_KEYS}
        executor = submitit.AutoExecutor(
            folder=self.params["submitit_folder"],
            cluster=self._EXECUTOR,
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in generic else f"slurm_{k}": v for k, v in settings.items()}
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")

        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        for number, overrides in zip(numbers, job_overrides, strict=True):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
        count = len(numbers)
        jobs = executor.map_array(
            self,
            [list(overrides) for overrides in job_overrides],
            ["hydra.sweep.dir"] * count,
            list(numbers),
            [f"job_id_for_{number}" for number in numbers],
            [Singleton.get_state()] * count,
        )
        return [
            self._outcome(job, list(overrides), number)
            for job, overrides, number in zip(jobs, job_overrides, numbers, strict=True)
        ]

    def _outcome(self, job, overrides: list[str], number: int) -> JobReturn:
        """The job's own return; for a job that SLURM ended, a FAILED one and its marker."""
        import submitit

        slurm_log = job.paths.stderr
        try:
            result = job.results()[0]
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError):
            state = job.state
            error = RuntimeError(f"SLURM job {job.job_id} ended {state}")
            log.error(f"job {number}: {error} (SLURM log: {slurm_log})")
            write_failed_marker(
                self._job_dir(overrides, number), error, " ".join(overrides), log_file=slurm_log
            )
            # What src.train returns for a job that raised (src.utils.task_wrapper): a FAILED
            # status would make Hydra's sweepers raise and end the sweep here.
            return JobReturn(
                overrides=overrides, status=JobStatus.COMPLETED, _return_value=float("nan")
            )
        marker = failed_marker_path(Path(result.hydra_cfg.hydra.runtime.output_dir))
        if marker.is_file():  # the task raised and src.utils.task_wrapper marked it
            with marker.open("a") as file:
                file.write(f"log: {slurm_log}\n")
        return result

    def _job_dir(self, overrides: list[str], number: int) -> Path:
        """The job's output folder, composed as the job composes it (it may never have run)."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config.hydra.job):
            config.hydra.job.num = number
        return Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir)
