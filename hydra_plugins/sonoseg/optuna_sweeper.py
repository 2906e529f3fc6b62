"""``hparams_search=...``: an Optuna search whose study several processes can fill together.

Why not hydra-optuna-sweeper: it pins optuna<3, whose SQL storage fails with SQLAlchemy 2 and
which has no journal storage; it counts ``n_trials`` per process (two processes on one study
run twice as many, and a restarted search starts its count again); it numbers job folders per
process (two processes write into the same folders); and it leaves the trials of a killed
search RUNNING forever. This sweeper keeps its config keys (sampler, direction, study_name,
storage, n_trials, n_jobs, params in Hydra's sweep syntax) and uses Optuna's own storages
(``src.studies.open_storage``) and ask-and-tell. What it adds:

- ``n_trials`` is the size of the study: a process asks only while the study has fewer trials
  that count (``src.studies.counts_towards_n_trials``); a trial asked when the study was
  already full (two processes asking at once) is told failed and marked ``not_run``.
- Each trial runs in ``<sweep dir>/<trial number>``, unique across processes.
- At start, the RUNNING trials of a sweep process of this host that is gone are told failed
  and marked ``interrupted``: they do not count, so a restarted search finishes all n_trials.
- A failed job (NaN value, or a job its launcher reports FAILED) is a FAIL trial; the search
  goes on (``src.utils.SweepFailures`` names the failed jobs when it ends).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from src.runs import process_identity, process_is_gone
from src.studies import (
    INTERRUPTED,
    JOB_DIR,
    NOT_RUN,
    OWNER,
    absolute_storage,
    counts_towards_n_trials,
    open_storage,
    write_study_record,
)

log = logging.getLogger(__name__)


def search_space(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Optuna distributions of the sweep overrides (``choice``, ``range``, ``interval``,
    ``tag(log, interval(...))``) and the other overrides, passed to every trial as given."""
    import optuna.distributions as od

    distributions, fixed = {}, []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(f"{key}={override.get_value_element_as_str()}")
            continue
        sweep = override.value()
        if isinstance(sweep, ChoiceSweep | RangeSweep):  # a range as the list of its values
            distributions[key] = od.CategoricalDistribution(list(override.sweep_iterator()))
        elif isinstance(sweep, IntervalSweep):
            log_scale = "log" in sweep.tags
            if isinstance(sweep.start, int) and isinstance(sweep.end, int):
                distributions[key] = od.IntDistribution(sweep.start, sweep.end, log=log_scale)
            else:
                distributions[key] = od.FloatDistribution(sweep.start, sweep.end, log=log_scale)
        else:
            raise ValueError(f"{key}: sweep {sweep} is not choice, range or interval")
    return distributions, fixed


class OptunaStudySweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: str,
        study_name: str,
        storage: str | None,
        n_trials: int,
        n_jobs: int,
        params: dict[str, str] | None = None,
    ) -> None:
        self.sampler = sampler
        self.direction = direction
        self.study_name = study_name
        self.storage = absolute_storage(storage)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = OmegaConf.to_container(params, resolve=True) if params else {}
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        distributions, fixed = search_space(
            [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        )
        sampler = instantiate(self.sampler) if isinstance(self.sampler, DictConfig) else None
        study = optuna.create_study(
            study_name=self.study_name,
            storage=open_storage(self.storage),
            sampler=sampler,
            direction=self.direction,
            load_if_exists=True,
        )
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if self.storage is not None:
            write_study_record(sweep_dir, self.storage, self.study_name)
        log.info(f"Study {self.study_name} in {self.storage or 'memory'}: n_trials={self.n_trials}")
        self._fail_interrupted(study)

        while trials := self._ask(study, distributions):
            overrides = []
            for trial in trials:
                trial.set_user_attr(JOB_DIR, str(sweep_dir / str(trial.number)))
                values = [f"{key}={value}" for key, value in trial.params.items()]
                overrides.append([*fixed, *values, f"hydra.sweep.subdir={trial.number}"])
            returns = self.launcher.launch(overrides, initial_job_idx=trials[0].number)
            for trial, ret in zip(trials, returns, strict=True):
                try:
                    value = float(ret.return_value)  # a job that failed raises here
                except Exception as error:
                    log.warning(f"trial {trial.number} failed: {error}")
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    continue
                if math.isnan(value):  # src.train returns NaN for a failed job
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
        self._write_results(study, sweep_dir)

    def _ask(self, study, distributions: dict) -> list:
        """Up to ``n_jobs`` new trials, as many as the study still lacks (none: it is full)."""
        import optuna

        trials = []
        for _ in range(self.n_jobs):
            counted = [t for t in study.get_trials(deepcopy=False) if counts_towards_n_trials(t)]
            if len(counted) >= self.n_trials:
                break
            trial = study.ask(distributions)
            trial.set_user_attr(OWNER, process_identity())
            earlier = [
                t
                for t in study.get_trials(deepcopy=False)
                if t.number < trial.number and counts_towards_n_trials(t)
            ]
            if len(earlier) >= self.n_trials:  # another process filled the study meanwhile
                trial.set_user_attr(NOT_RUN, f"asked when the study had its {self.n_trials}")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                break
            trials.append(trial)
        return trials

    @staticmethod
    def _fail_interrupted(study) -> None:
        import optuna

        for frozen in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
            owner = frozen.user_attrs.get(OWNER, "")
            if not process_is_gone(owner):
                continue
            trial = optuna.trial.Trial(study, frozen._trial_id)
            trial.set_user_attr(INTERRUPTED, f"its sweep process ({owner}) ended before it")
            study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            log.warning(f"trial {frozen.number} was left running by {owner}: marked failed")

    def _write_results(self, study, sweep_dir: Path) -> None:
        """optimization_results.yaml, as hydra-optuna-sweeper writes it: the best trial."""
        import optuna

        complete = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
        if not complete:
            log.error(f"study {self.study_name}: no trial completed")
            return
        best = study.best_trial
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        (sweep_dir / "optimization_results.yaml").write_text(yaml.safe_dump(results))
        log.info(f"Best parameters: {best.params}; best value: {best.value}")
