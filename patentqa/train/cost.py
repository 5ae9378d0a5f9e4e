"""What a multirun will do, printed before it starts: training runs, evaluations, and on SLURM GPU-hours.

Hydra calls ``MultirunCost.on_multirun_start`` (``conf/hydra/default.yaml``, ``hydra.callbacks``)
before the sweeper launches anything. Each job's config is composed as the sweeper would compose
it (the basic sweeper's cartesian product; an Optuna search's trials still to run), then per job:

- **training runs**: 1 unless ``train.enabled=false`` or ``dry_run=true``;
- **steps and checkpoints**: ``train.max_steps``, else the built dataset's rows × epochs over the
  global batch; swift saves every ``save_steps`` and at the last step (``patentqa/train/schedule.py``,
  which the dry run prints);
- **evaluations** (one model answering one split) with ``eval.after_train``: every checkpoint on dev,
  the best on test, and the base model and baselines on both; a base model already scored for the
  same data is reused, so this is an upper bound;
- **GPU-hours** (SLURM launcher only): the dry-run plan's parameters and prompt tokens per row,
  training FLOPs of ``6 N`` per token for LoRA (forward, recomputed forward under gradient
  checkpointing, activation gradients), ``8 N`` for full fine-tuning, at ``launcher.gpu_tflops`` ×
  ``launcher.mfu`` per GPU. Evaluation time is not included;
- **host RAM** (SLURM launcher only): the dry-run plan's host RAM per node beside ``hydra.launcher.mem_gb``,
  with a warning when the request is smaller.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from patentqa.train.schedule import built_rows, checkpoints_of, global_batch, steps_of

MAX_COMPOSED = 64  # jobs composed one by one; a larger sweep is estimated from its first MAX_COMPOSED


@dataclass
class JobCost:
    """One job of the multirun."""

    trains: bool
    steps: int | None
    checkpoints: int | None
    evaluations: int | None
    gpu_hours: float | None = None
    why_no_hours: str | None = None
    host_gib: float | None = None  # host RAM a node needs (the dry-run plan), checked against the SLURM request


def job_overrides(config: DictConfig) -> tuple[list[list[str]], str]:
    """The override list of each job still to run, and how they were counted (for the printout)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    if "Optuna" in target:
        fixed = [o for o in task if not parser.parse_override(o).is_sweep_override()]
        todo, done = optuna_trials_left(sweeper)
        return [fixed] * todo, f"Optuna search: {todo} trial(s) to run of n_trials={sweeper.n_trials}" + (
            f" ({done} complete)" if done else "")
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    batches = BasicSweeper.split_arguments(parser.parse_overrides(params + task), None)
    return [job for batch in batches for job in batch], "the sweep's cartesian product"


def optuna_trials_left(sweeper: DictConfig) -> tuple[int, int]:
    """(trials still to run, trials complete) of a search; read only, the study is not touched."""
    from patentqa.train.search import sqlite_path

    n_trials = int(sweeper.n_trials)
    path = sqlite_path(sweeper.get("storage"))
    if sweeper.get("storage") is None or (path is not None and not path.is_file()):
        return n_trials, 0
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=str(sweeper.study_name), storage=str(sweeper.storage))
    except KeyError:
        return n_trials, 0
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    resumable = "Resumable" in str(sweeper.get("_target_", ""))
    return (max(0, n_trials - complete) if resumable else n_trials), complete


def evaluations_of(cfg: DictConfig, checkpoints: int | None) -> int | None:
    """Evaluations (one model, one split) of a job's checkpoint sweep; 0 without ``eval.after_train``."""
    if cfg.dry_run or not cfg.eval.after_train:
        return 0
    extra = (1 if cfg.eval.include_base else 0) + len(cfg.eval.get("baselines") or [])
    splits = 2 if float(cfg.data.split.get("test") or 0) > 0 else 1
    if checkpoints is None:
        return None
    return checkpoints + (splits - 1) * min(checkpoints, 1) + splits * extra  # + the best one on test


def job_plan(cfg: DictConfig, rows_file: Path, plans: dict[str, Any]) -> Any:
    """The dry-run plan of a job, cached by model/prompt/train/launcher."""
    from patentqa.train.plan import make_plan

    key = json.dumps({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "prompt", "train", "launcher")},
                     sort_keys=True, default=str)
    if key not in plans:
        plans[key] = make_plan(cfg, rows_file)
    return plans[key]


def gpu_hours(cfg: DictConfig, steps: int, rows_file: Path, plans: dict[str, Any]) -> float:
    """Training GPU-hours from the dry-run plan (see module doc)."""
    plan = job_plan(cfg, rows_file, plans)
    forms = plan.tokens.values()
    tokens = sum(f["tokens"] * f["rows"] for f in forms) / max(sum(f["rows"] for f in forms), 1)
    per_token = (8 if cfg.train.tuner_type == "full" else 6) * plan.params["total"]
    flops = per_token * tokens * global_batch(cfg) * steps
    return flops / (float(cfg.launcher.gpu_tflops) * 1e12 * float(cfg.launcher.mfu)) / 3600


def job_cost(cfg: DictConfig, slurm: bool, plans: dict[str, Any]) -> JobCost:
    from patentqa.data.build import dataset_dir

    trains = bool(cfg.train.enabled) and not cfg.dry_run
    rows_file = dataset_dir(cfg) / "train.jsonl"
    steps = steps_of(cfg, built_rows(rows_file)) if trains else 0
    checkpoints = checkpoints_of(cfg, steps)
    cost = JobCost(trains, steps, checkpoints, evaluations_of(cfg, checkpoints))
    if slurm and trains:
        if steps is None:
            cost.why_no_hours = "the dataset is not built yet (python -m patentqa.data +exp=NAME builds it)"
        elif not cfg.launcher.get("gpu_tflops") or not cfg.launcher.get("mfu"):
            cost.why_no_hours = f"launcher={cfg.launcher.name} sets no gpu_tflops / mfu"
        else:
            cost.gpu_hours = gpu_hours(cfg, steps, rows_file, plans)
        try:
            cost.host_gib = job_plan(cfg, rows_file, plans).memory_gib["host_per_node"]
        except (ValueError, KeyError, OSError, ImportError):  # no plan for this model: nothing to check
            pass
    return cost


def _total(values: list[int | float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "unknown"
    text = f"{sum(known):,.1f}" if any(isinstance(v, float) for v in known) else f"{sum(known):,}"
    return text if len(known) == len(values) else f"{text} + {len(values) - len(known)} job(s) unknown"


def estimate(config: DictConfig) -> str:
    """The lines printed before a multirun (see module doc)."""
    from hydra.core.global_hydra import GlobalHydra

    jobs, how = job_overrides(config)
    slurm = "slurm" in str(config.hydra.launcher.get("_target_", "")).lower()
    loader = GlobalHydra.instance().config_loader()
    plans: dict[str, Any] = {}
    composed: dict[tuple[str, ...], JobCost] = {}  # an Optuna search's trials share one override list
    for job in map(tuple, jobs[:MAX_COMPOSED]):
        if job not in composed:
            composed[job] = job_cost(loader.load_sweep_config(config, list(job)), slurm, plans)
    costs = [composed[tuple(job)] for job in jobs[:MAX_COMPOSED]]
    costs += costs[-1:] * (len(jobs) - len(costs)) if costs else []  # the rest estimated like the last composed
    lines = [f"multirun: {len(jobs)} job(s) ({how})",
             f"  training runs: {sum(c.trains for c in costs)}; optimizer steps: {_total([c.steps for c in costs])}",
             f"  checkpoints: {_total([c.checkpoints for c in costs])}; evaluations (a model answering one split, "
             f"base model reused where already scored): up to {_total([c.evaluations for c in costs])}"
             + ("" if any(c.evaluations for c in costs) or not costs or config.eval.after_train else
                " (eval.after_train=false: `python -m patentqa.eval run_dir=RUN` scores a run later)")]
    if slurm:
        hours = [c.gpu_hours for c in costs if c.trains]
        why = sorted({c.why_no_hours for c in costs if c.why_no_hours})
        lines.append(f"  GPU-hours (training, from the dry-run plan; evaluation not included): {_total(hours)}"
                     + (f": {'; '.join(why)}" if why else ""))
        lines += memory_lines(config.hydra.launcher.get("mem_gb"), [c.host_gib for c in costs if c.host_gib])
    return "\n".join(lines)


def memory_lines(mem_gb: Any, needs: list[float]) -> list[str]:
    """The SLURM memory request beside the largest host RAM a job's plan needs (SLURM's GB are GiB)."""
    if not needs:
        return []
    need = max(needs)
    if mem_gb is None:
        return [f"  host RAM: a job needs ~{need:.0f} GiB per node; hydra.launcher.mem_gb is unset (the partition's "
                "default applies)"]
    lines = [f"  host RAM: a job needs ~{need:.0f} GiB per node; hydra.launcher.mem_gb={mem_gb}"]
    if need > float(mem_gb):
        lines.append(f"  WARNING: hydra.launcher.mem_gb={mem_gb} is below the ~{need:.0f} GiB the plan needs: raise it "
                     "on a node that has the memory (e.g. full fine-tuning with launcher=8gpu_offload)")
    return lines


TRAINING_ENTRY_POINTS = ("patentqa.train", "patentqa.train.__main__")


def entry_point() -> str:
    """The module ``python -m`` ran (``patentqa.train.__main__``), or "" when run otherwise."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", "") or ""


class MultirunCost(Callback):
    """Prints ``estimate`` when a multirun starts; an estimate that fails says so and the run goes on."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if entry_point() not in TRAINING_ENTRY_POINTS:  # e.g. an infer multirun over shards: no training to count
            return
        try:
            print(estimate(config), flush=True)
        except Exception as error:  # the estimate must never stop the sweep
            print(f"multirun: cost not estimated ({type(error).__name__}: {error})", flush=True)
