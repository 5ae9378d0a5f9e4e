"""Hydra imports every module under ``hydra_plugins`` at the start of every command: nothing heavy may load there.

A fact test, not a timing test: ``python -m patentqa.data`` on a warm cache spent ~4 s of its start-up
importing optuna (scipy, cmaes, matplotlib) through the resumable sweeper's module (issue 21.5).
"""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("optuna", "scipy", "cmaes", "matplotlib", "torch", "sqlalchemy")


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_hydra_plugin_scan_imports_no_optuna():
    # what Hydra does at start-up: walk hydra_plugins and import every plugin module it finds
    loaded = _imported_after("from hydra.core.plugins import Plugins\nPlugins.instance()")
    assert "hydra_plugins" in loaded
    assert not loaded & set(HEAVY), f"the Hydra plugin scan imported {sorted(loaded & set(HEAVY))}"


def test_our_sweeper_module_is_light_and_still_the_resumable_sweeper():
    loaded = _imported_after("import hydra_plugins.patentqa_search as p\n"
                             "from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper\n"
                             "assert issubclass(p.ResumableOptunaSweeper, OptunaSweeper)")
    assert "optuna" not in loaded and "patentqa" not in loaded, sorted(loaded & {"optuna", "patentqa"})
