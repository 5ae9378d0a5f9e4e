"""Train an experiment: data (cached) → swift sft LoRA run → run record (+ W&B).

    python -m patentqa.train +exp=smoke
    python -m patentqa.train +exp=lora_r8 dry_run=true
    python -m patentqa.train -m +exp=lora_r8,lora_r16
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from patentqa.config import CONF_DIR
from patentqa.data.corpus import DataError
from patentqa.train.swift_args import SwiftArgError
from patentqa.train.train import TrainFailed, train


def objective(result: Any) -> float | None:
    """The best checkpoint's dev score by ``eval.select_by`` (what a search maximizes); None without a sweep."""
    if result is None or not result.sweep:
        return None
    best = result.sweep["best"]
    value = (best.get("dev") or {}).get(result.sweep.get("select_by") or "composite")
    return None if value is None else float(value)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Train one experiment; returns the best dev score (Hydra's sweepers, e.g. Optuna, read it)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    group = f"sweep-{Path(hydra_cfg.sweep.dir).name}" if sweep else None
    named_dir = any(o.startswith("hydra.run.dir=") for o in hydra_cfg.overrides.hydra)
    if int(cfg.launcher.get("nnodes") or 1) > 1 and not (sweep or named_dir or os.environ.get("PATENTQA_RUN_ID")):
        print(f"error: launcher={cfg.launcher.name} has {cfg.launcher.nnodes} nodes, which must all write into one "
              "run dir: set the same PATENTQA_RUN_ID on every node (e.g. PATENTQA_RUN_ID=$SLURM_JOB_ID)",
              file=sys.stderr)
        sys.exit(2)
    try:
        result = train(cfg, run_dir, group=group)
    except (SwiftArgError, DataError, TrainFailed, TimeoutError) as error:
        print(f"\n{cfg.name}: {'training failed' if isinstance(error, TrainFailed) else 'error'} ({run_dir}):\n{error}",
              file=sys.stderr)
        if sweep:
            return None  # the manifest says failed (a search marks the trial failed); other members still run
        sys.exit(error.exit_code if isinstance(error, TrainFailed) else 2)  # swift's own status
    if not cfg.dry_run:
        print(f"\ntraining succeeded: {run_dir}\n  checkpoints: {[c.path.name for c in result.checkpoints]}\n"
              f"  summary: {result.summary}")
    return objective(result)


NODE_HYDRA_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=stdout")


def node_argv(argv: list[str], environ: dict[str, str]) -> list[str]:
    """Nodes after the first (``NODE_RANK`` > 0) share node 0's run dir and write no Hydra file into it: no
    ``.hydra/`` record and no ``__main__.log`` (node 0's are the run's; two nodes rewriting one file at once
    could tear it); such a node logs to its stdout (its job's own log) and its swift log."""
    if int(environ.get("NODE_RANK") or 0) == 0:
        return argv
    given = {a.split("=", 1)[0] for a in argv}
    return [*argv, *(o for o in NODE_HYDRA_OVERRIDES if o.split("=", 1)[0] not in given)]


if __name__ == "__main__":
    sys.argv = node_argv(sys.argv, dict(os.environ))
    main()
