"""The optimisation a training run will do, computed before launch from the rows it trains on.

``python -m patentqa.train +exp=NAME dry_run=true`` prints it (and the multirun cost estimate
counts with it): world size, global batch, steps per epoch, total steps, checkpoints and dev
evaluations, and a warning when the run would leave the checkpoint sweep fewer than
``MIN_CHECKPOINTS`` checkpoints to choose from.

The counts follow the installed libraries, not a rule of thumb:

- **steps** (transformers 5 ``Trainer.set_initial_training_values``): each rank's dataloader holds
  ``ceil(rows / (per-device batch × world size))`` batches; an epoch is ``ceil(batches / accumulation)``
  optimizer steps; a run is ``ceil(epochs × steps per epoch)`` steps unless ``train.max_steps`` is set;
- **checkpoints and dev evaluations** (ms-swift 4.6 ``DefaultFlowCallbackNew``): every ``save_steps`` /
  ``eval_steps`` and once more at the last step, so ``ceil(steps / save_steps)``; swift's ``eval_steps``
  defaults to ``save_steps``; ``save_total_limit: null`` keeps every checkpoint for the sweep.

Rows come from the built ``train.jsonl``; before the data stage has run they are estimated from the
corpus's question file (the same routing, document split and SFT forms the build uses, without
opening a PDF), and said to be an estimate.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from patentqa.config import world_size

MIN_CHECKPOINTS = 3  # fewer leaves the checkpoint sweep (and a search's objective) next to nothing to choose from


def global_batch(cfg: DictConfig) -> int:
    """Rows per optimizer step: per-device batch × accumulation × training processes."""
    return int(cfg.train.per_device_train_batch_size) * int(cfg.train.gradient_accumulation_steps) * world_size(cfg)


def steps_per_epoch(cfg: DictConfig, rows: int) -> int:
    """Optimizer steps in one epoch over ``rows`` (transformers' count, see module doc); GRPO's batches hold
    completions, ``num_generations`` of each row."""
    samples = rows * int(cfg.train.get("num_generations") or 1) if cfg.train.get("rlhf_type") else rows
    batches = math.ceil(samples / (int(cfg.train.per_device_train_batch_size) * world_size(cfg)))
    return max(math.ceil(batches / int(cfg.train.gradient_accumulation_steps)), 1)


def steps_of(cfg: DictConfig, rows: int | None) -> int | None:
    """Optimizer steps of the run: ``train.max_steps``, else epochs × steps per epoch; None without rows."""
    if cfg.train.get("max_steps"):
        return int(cfg.train.max_steps)
    if rows is None:
        return None
    return math.ceil(float(cfg.train.num_train_epochs) * steps_per_epoch(cfg, rows))


def every(interval: int | None, steps: int | None) -> int | None:
    """Events at every ``interval`` steps and at the last step (swift's save/eval rule)."""
    if steps is None:
        return None
    return math.ceil(steps / interval) if interval and steps else min(steps, 1)


def checkpoints_of(cfg: DictConfig, steps: int | None) -> int | None:
    return every(int(cfg.train.get("save_steps") or 0), steps)


def dev_evaluations_of(cfg: DictConfig, steps: int | None) -> int | None:
    """swift's dev-loss evaluations during training (``eval_steps``, default ``save_steps``); GRPO has none (no
    dev set is given to it: the checkpoint sweep scores dev)."""
    if cfg.train.get("rlhf_type"):
        return 0
    return every(int(cfg.train.get("eval_steps") or cfg.train.get("save_steps") or 0), steps)


def built_rows(rows_file: Path) -> int | None:
    """Rows of a built training set; None before it is built."""
    if not rows_file.is_file():
        return None
    with rows_file.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def estimated_rows(cfg: DictConfig) -> tuple[int | None, str]:
    """Training rows the data stage would write, from the corpus's question file alone (no PDF read):
    the run's rounds, its document split, and one row per question plus, with
    ``data.sft.all_page_questions_with_context``, a second for each figure-only one. (rows, how)."""
    from patentqa.data.prompts import prompt_form
    from patentqa.data.split import split_documents

    split = str(cfg.data.train_split)
    questions_file = Path(str(cfg.data.dir)) / split / f"{split}.jsonl"
    if not questions_file.is_file():
        made = " (the data stage generates this synthetic set)" if cfg.data.get("synth") is not None else ""
        return None, f"not built, and no questions at {questions_file}{made}"
    rounds = set(cfg.data.get("rounds") or ["a", "b"])
    questions = []
    for line in questions_file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("question") and row.get("document") \
                and ("a" if row.get("options") else "b") in rounds:
            questions.append(row)
    documents = split_documents((q["document"] for q in questions), float(cfg.data.split.dev),
                                float(cfg.data.split.test), int(cfg.seed), cfg.data.get("folds"),
                                int(cfg.data.get("fold") or 0))
    train_docs = set(documents.train)
    extra = bool((cfg.data.get("sft") or {}).get("all_page_questions_with_context", True))
    rows = sum(1 + (extra and prompt_form(q["question"]) == "figure_only")
               for q in questions if q["document"] in train_docs)
    return rows, (f"estimated from {questions_file} ({len(questions)} questions, {len(train_docs)} of "
                  f"{len(set(q['document'] for q in questions))} documents train); not built yet")


@dataclass
class Schedule:
    """What the dry run prints about the optimisation (see module doc)."""

    world_size: int
    per_device: int
    accumulation: int
    global_batch: int
    epochs: float
    rows: int | None
    rows_source: str
    steps_per_epoch: int | None
    steps: int | None
    max_steps: int | None
    save_steps: int
    eval_steps: int
    checkpoints: int | None
    dev_evaluations: int | None
    warnings: list[str] = field(default_factory=list)

    def format(self) -> str:
        def n(value: int | None) -> str:
            return "unknown" if value is None else f"{value:,}"

        lines = [f"schedule: world size {self.world_size}; global batch {self.global_batch} = {self.per_device} per "
                 f"device × {self.accumulation} accumulation × {self.world_size} rank(s)",
                 f"  rows:        {n(self.rows)} ({self.rows_source})"]
        if self.max_steps:
            lines.append(f"  steps:       {self.max_steps:,} (train.max_steps)"
                         + (f"; an epoch would be {self.steps_per_epoch:,}" if self.steps_per_epoch else ""))
        else:
            lines.append(f"  steps:       {n(self.steps_per_epoch)} per epoch × {self.epochs:g} epochs = "
                         f"{n(self.steps)}")
        lines.append(f"  checkpoints: {n(self.checkpoints)} (every {self.save_steps} steps and the last; every one "
                     "kept and scored on dev by the sweep)")
        lines.append(f"  dev evaluations: {n(self.dev_evaluations)} (swift's dev loss every {self.eval_steps} steps "
                     "and at the last)" if self.dev_evaluations != 0 else
                     "  dev evaluations: none during training (the checkpoint sweep scores every checkpoint on dev)")
        lines += [f"  WARNING: {warning}" for warning in self.warnings]
        return "\n".join(lines)


def make_schedule(cfg: DictConfig, rows_file: Path) -> Schedule:
    """The schedule of ``cfg``'s run over the rows in ``rows_file`` (estimated when not built yet)."""
    rows = built_rows(rows_file)
    source = f"built: {rows_file}"
    if rows is None:
        rows, source = estimated_rows(cfg)
    steps = steps_of(cfg, rows)
    save = int(cfg.train.get("save_steps") or 0)
    schedule = Schedule(
        world_size=world_size(cfg), per_device=int(cfg.train.per_device_train_batch_size),
        accumulation=int(cfg.train.gradient_accumulation_steps), global_batch=global_batch(cfg),
        epochs=float(cfg.train.num_train_epochs), rows=rows, rows_source=source,
        steps_per_epoch=steps_per_epoch(cfg, rows) if rows is not None else None, steps=steps,
        max_steps=int(cfg.train.max_steps) if cfg.train.get("max_steps") else None, save_steps=save,
        eval_steps=int(cfg.train.get("eval_steps") or save), checkpoints=checkpoints_of(cfg, steps),
        dev_evaluations=dev_evaluations_of(cfg, steps))
    if schedule.checkpoints is not None and schedule.checkpoints < MIN_CHECKPOINTS:
        schedule.warnings.append(
            f"this run leaves {schedule.checkpoints} checkpoint(s) ({steps} steps, a save every {save}): the sweep "
            f"has fewer than {MIN_CHECKPOINTS} to choose from; lower train.save_steps (e.g. "
            f"train.save_steps={max(1, steps // 10)})")
    if rows is not None and rows < schedule.global_batch:
        schedule.warnings.append(f"{rows} rows are fewer than one global batch of {schedule.global_batch}")
    return schedule
