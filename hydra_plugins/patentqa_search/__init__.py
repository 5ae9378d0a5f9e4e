"""Hydra's Optuna sweeper, resumable after a kill (the rules: ``patentqa.train.search``)."""
from __future__ import annotations

from typing import Any, List

from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

from patentqa.train.search import resume_study


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def sweep(self, arguments: List[str]) -> None:
        if self.storage and self.study_name:
            self.n_trials, self.job_idx = resume_study(self.storage, self.study_name, self.n_trials)
        super().sweep(arguments)


class ResumableOptunaSweeper(OptunaSweeper):
    """Hydra's Optuna sweeper with the resume rules of ``patentqa.train.search`` (same arguments)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        plugin = self.sweeper
        self.sweeper = ResumableOptunaSweeperImpl.__new__(ResumableOptunaSweeperImpl)
        self.sweeper.__dict__.update(plugin.__dict__)
