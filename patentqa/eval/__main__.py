"""Checkpoint sweep of a training run on the held-out dev split (best one then scored on test).

    python -m patentqa.eval run_dir=runs/smoke/2026-11-21_06-08-02 [eval.select_by=char_f1 ...]
    python -m patentqa.eval run_dir=RUN dry_run=true   # only the vLLM inference plan; nothing loads

The run's own resolved config (RUN/config.yaml, absolute paths: any working directory will do) is
used; further arguments override it: ``infer=vllm`` swaps in a config group's option,
``infer.tensor_parallel_size=2`` sets a value.
Metrics are logged into the run's W&B run (same id, resumed).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from patentqa.cli import InputError, fail, run_config_file
from patentqa.config import apply_overrides
from patentqa.data.corpus import DataError
from patentqa.eval.sweep import sweep, sweep_inputs
from patentqa.tracking import Tracker


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    run_args = [a for a in argv if a.startswith("run_dir=")]
    if len(run_args) != 1:
        print("usage: python -m patentqa.eval run_dir=RUN [key=value ...]", file=sys.stderr)
        return 2
    run_dir = Path(run_args[0].split("=", 1)[1])
    try:
        cfg = apply_overrides(OmegaConf.load(run_config_file(run_dir)), [a for a in argv if not a.startswith("run_dir=")])
    except ValueError as error:  # InputError included
        return fail(error)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")) \
        if (run_dir / "manifest.json").is_file() else {}
    if any(a.lower() == "dry_run=true" for a in argv):
        print(inference_plan(cfg, manifest))
        return 0
    try:  # before the W&B run starts: a run with nothing to evaluate writes nothing
        inputs = sweep_inputs(cfg, run_dir)
    except InputError as error:
        return fail(error)
    except DataError as error:
        return fail(error, 1)
    run_id = (manifest.get("wandb") or {}).get("id")
    with Tracker(OmegaConf.to_container(cfg.logger, resolve=True), run_dir=run_dir, name=cfg.name,
                 group=(manifest.get("wandb") or {}).get("group") or cfg.name, tags=list(cfg.tags),
                 config=None, job_type="eval", run_id=run_id) as tracker:
        sweep(cfg, run_dir, tracker, inputs)
    return 0


def inference_plan(cfg: DictConfig, manifest: dict) -> str:
    """The vLLM plan on the run's launcher (``patentqa/infer/capacity.py``), prompt lengths from the rows
    the run trained on."""
    from patentqa.data.build import dataset_dir
    from patentqa.infer.capacity import make_inference_plan

    data_dir = Path((manifest.get("dataset") or {}).get("dir") or dataset_dir(cfg))
    try:
        return make_inference_plan(cfg, data_dir / "train.jsonl").format()
    except (ValueError, KeyError, OSError, ImportError) as error:
        return f"inference plan: not available ({type(error).__name__}: {error})"


if __name__ == "__main__":
    sys.exit(main())
