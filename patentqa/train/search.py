"""Hyperparameter search through Hydra's Optuna sweeper, resumable after a kill.

``conf/hparams_search/lora.yaml`` selects ``hydra/sweeper=optuna`` and points its ``_target_`` at
``hydra_plugins.patentqa_search.ResumableOptunaSweeper`` (Hydra loads sweepers only from its
``hydra_plugins`` namespace), a thin subclass that calls ``resume_study`` before the plugin sweeps.
The study lives in Optuna's SQLite storage under the search's run dir. The plugin, rerun on the
same storage, would run ``n_trials`` *more* trials and number their run dirs from 0 again (over
finished trials' dirs). This sweeper, before it asks for a trial:

- marks a trial left RUNNING by a killed search as FAIL (``user_attrs["interrupted"]``) and
  queues its parameters again, so the interrupted trial is the next one run;
- runs only ``n_trials`` minus the trials already COMPLETE;
- numbers new run dirs after the trials already in the study.

One search process per storage (a RUNNING trial is taken for a dead one).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def sqlite_path(storage: Any) -> Path | None:
    """The file of a ``sqlite:///PATH`` storage URL (None for other storages)."""
    text = str(storage or "")
    return Path(text[len("sqlite:///"):]) if text.startswith("sqlite:///") else None


def resume_study(storage: Any, study_name: str, n_trials: int) -> tuple[int, int]:
    """Prepare a study for the rest of a search: (trials still to run, trials already in the study)."""
    import optuna
    from optuna.trial import TrialState

    path = sqlite_path(storage)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # a new study
        return n_trials, 0
    numbered = len(study.trials)  # new run dirs come after these (an enqueued trial is numbered when asked)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params)
        log.warning(f"trial {trial.number} was interrupted (killed search): marked FAIL, its parameters queued again")
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    todo = max(0, n_trials - complete)
    print(f"search {study_name}: {complete} of {n_trials} trials complete in {storage}; {todo} to run", flush=True)
    return todo, numbered
