"""The inference stage, top to bottom: data (cached) → questions of a split → pipeline → predictions + submission.

``infer(cfg)`` is what ``python -m patentqa.infer +exp=NAME checkpoint=DIR split=test`` runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from patentqa.cli import InputError
from patentqa.data.build import DatasetBuild, build_dataset, prompt_config
from patentqa.data.corpus import Question
from patentqa.data.retrieval import style_examples
from patentqa.infer.engines import make_engine
from patentqa.infer.pipeline import AnswerContext, PipelineSettings, answer_questions, read_predictions, \
    record_counts, record_line, resumable, write_submission
from patentqa.infer.shards import PARTS_DIR, ShardLayout, UnfinishedParts, merge_parts, part_done, part_path, \
    part_questions, run_replicas
from patentqa.tracking import atomic_write, checkpoint_kind, write_json_atomic

SPLITS = {"test": "the competition's test split (unlabelled)", "dev": "our labelled dev split",
          "heldout": "our labelled test split"}


def check_request(cfg: DictConfig) -> None:
    """``InputError`` for a split or checkpoint this command cannot answer with, before anything loads."""
    check_split(cfg.split)
    if not cfg.checkpoint:
        return
    path = Path(cfg.checkpoint)
    if not path.is_dir():
        raise InputError(f"checkpoint={path}: no such directory")
    kind = checkpoint_kind(path)
    if kind is None:
        raise InputError(f"checkpoint={path}: not a checkpoint (no adapter_config.json, no config.json)")
    if kind == "full":
        raise InputError(f"checkpoint={path}: a full fine-tuning checkpoint (config.json, no adapter): "
                         f"answer with it as the model, model.path={path}")


def check_split(split: str) -> None:
    """``InputError`` unless ``split`` is one of ``SPLITS``."""
    if split not in SPLITS:
        raise InputError(f"split={split}: unknown split; expected one of {', '.join(sorted(SPLITS))}")


def split_questions(build: DatasetBuild, split: str) -> list[Question]:
    """Questions of a CLI split: ``test`` = unlabelled competition split; ``dev``/``heldout`` = labelled."""
    check_split(split)
    if split == "test":
        if build.unlabelled is None:
            raise ValueError("this dataset has no unlabelled test split (data.test_split)")
        return build.unlabelled.questions
    return build.questions["dev" if split == "dev" else "test"]


def answer_context(cfg: DictConfig, build: DatasetBuild, questions: list[Question]) -> AnswerContext:
    """Prompts, pages, the prepared retriever, and style examples drawn from training questions only."""
    style = style_examples(questions, build.questions["train"], cfg.retrieval.style_examples,
                           build.retriever.similarity)
    return AnswerContext(prompt_config(cfg), build.documents, build.pages.paths, build.retriever, style,
                         layout=build.layout)


def output_dir(cfg: DictConfig) -> Path:
    """Deterministic, so running the same command again resumes into the same files."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    tag = Path(cfg.checkpoint).name if cfg.checkpoint else "base"
    return Path(cfg.paths.runs_dir) / cfg.name / "predictions" / f"{cfg.split}-{tag}"


def infer(cfg: DictConfig) -> dict[str, Any]:
    """Answer ``cfg.split`` (all of it, or this job's shard); write predictions.jsonl, submission.jsonl and
    summary.json once every question is answered (``patentqa.infer.shards`` for parts and replicas)."""
    layout = ShardLayout.from_cfg(cfg.infer)
    check_request(cfg)
    build = build_dataset(cfg)
    questions = split_questions(build, cfg.split)
    out = output_dir(cfg)
    if layout.parts == 1:
        summary = answer_part(cfg, build, questions, out / "predictions.jsonl")
        return finish(cfg, out, questions, read_predictions(out / "predictions.jsonl"), summary)
    ran: list[dict[str, Any]] = []
    if not layout.merge_only:
        ran = answer_job_parts(cfg, build, questions, out, layout)
    try:
        records = merge_parts(out, questions, layout)
    except UnfinishedParts as unfinished:
        if layout.merge_only:
            raise
        return {"merged": False, "waiting": str(unfinished), "out_dir": str(out), "parts": ran}
    summary = {"questions": len(records), "answered_now": sum(p["answered_now"] for p in ran), "parts": ran,
               "layout": {"num_shards": layout.num_shards, "data_parallel_size": layout.replicas}}
    atomic_write(out / "predictions.jsonl", "".join(record_line(r) for r in records).encode("utf-8"))
    return finish(cfg, out, questions, records, summary)


def answer_part(cfg: DictConfig, build: DatasetBuild, questions: list[Question], predictions: Path) -> dict[str, Any]:
    """Answer ``questions`` into ``predictions`` with one engine (resuming what is there; none loaded when done)."""
    if predictions.is_file() and part_done(predictions, questions):
        return {"questions": len(questions), "resumed_after": len(questions), "answered_now": 0}
    resumable(predictions, questions)  # another split's answers there: stop before a model loads
    ctx = answer_context(cfg, build, questions)
    engine = make_engine(cfg.infer, cfg.model, [cfg.checkpoint] if cfg.checkpoint else [])  # vLLM sizes its LoRA
    try:
        return answer_questions(questions, ctx, engine, PipelineSettings.from_cfg(cfg.pipeline, cfg.infer, cfg.model),
                                predictions, adapter=cfg.checkpoint)
    finally:
        engine.close()


def answer_job_parts(cfg: DictConfig, build: DatasetBuild, questions: list[Question], out: Path,
                     layout: ShardLayout) -> list[dict[str, Any]]:
    """This job's parts: in this process (one replica) or one pinned engine process per part; their summaries."""
    parts = [p for p in layout.job_parts
             if not part_done(part_path(out, p, layout.parts), part_questions(questions, p, layout.parts))]
    if layout.replicas == 1 or not parts:
        for part in parts:
            answer_one_part(cfg, build, questions, out, part, layout)
    else:
        config = out / PARTS_DIR / "config.yaml"  # what the replicas answer with: this job's config, resolved
        stored = OmegaConf.merge(cfg, {"out_dir": str(out)})
        atomic_write(config, OmegaConf.to_yaml(stored, resolve=True).encode("utf-8"))
        run_replicas(config, out, parts, layout, cfg.infer)
    return [json.loads(part_path(out, p, layout.parts).with_suffix(".json").read_text(encoding="utf-8"))
            if p in parts else {"part": p, "answered_now": 0} for p in layout.job_parts]


def answer_one_part(cfg: DictConfig, build: DatasetBuild, questions: list[Question], out: Path, part: int,
                    layout: ShardLayout) -> dict[str, Any]:
    """Answer part ``part`` of the split into its part file; its summary (with the devices it ran on) beside it."""
    path = part_path(out, part, layout.parts)
    summary = answer_part(cfg, build, part_questions(questions, part, layout.parts), path)
    summary.update(part=part, cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                   cpus=sorted(os.sched_getaffinity(0)))
    write_json_atomic(path.with_suffix(".json"), summary)
    return summary


def finish(cfg: DictConfig, out: Path, questions: list[Question], records: list[dict[str, Any]],
           summary: dict[str, Any]) -> dict[str, Any]:
    """The submission and summary.json for a complete set of predictions."""
    write_submission(out / "submission.jsonl", questions, records)
    summary.update(split=cfg.split, checkpoint=cfg.checkpoint, out_dir=str(out), engine=cfg.infer.name)
    if "kinds" not in summary:
        summary.update(record_counts(records))
    write_json_atomic(out / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    return json.dumps(summary, ensure_ascii=False, indent=2)
