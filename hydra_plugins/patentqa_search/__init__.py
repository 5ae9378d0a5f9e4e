"""Hydra's Optuna sweeper, resumable after a kill (the rules: ``patentqa.train.search``).

Hydra imports every module under ``hydra_plugins`` at the start of every command (its plugin
scan), so this module imports nothing heavy: optuna (with scipy, cmaes, matplotlib: ~4 s here)
and ``patentqa.train.search`` are imported only when a search actually runs, as Hydra's own
``OptunaSweeper`` does (its ``_impl`` is imported in ``__init__``, not at module import).
tests/test_plugin_scan.py keeps it so.
"""
from __future__ import annotations

from typing import List

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper  # light: no optuna import


class ResumableOptunaSweeper(OptunaSweeper):
    """Hydra's Optuna sweeper with the resume rules of ``patentqa.train.search`` (same arguments; its
    ``__init__`` builds Hydra's ``OptunaSweeperImpl``, which is where optuna gets imported)."""

    def sweep(self, arguments: List[str]) -> None:
        from patentqa.train.search import resume_study

        impl = self.sweeper  # after setup(): job_idx = 0; the study may already hold trials of a killed search
        if impl.storage and impl.study_name:
            impl.n_trials, impl.job_idx = resume_study(impl.storage, impl.study_name, impl.n_trials)
        return impl.sweep(arguments)
