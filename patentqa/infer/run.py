"""The inference stage, top to bottom: data (cached) → questions of a split → pipeline → predictions + submission.

``infer(cfg)`` is what ``python -m patentqa.infer +exp=NAME checkpoint=DIR split=test`` runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from patentqa.data.build import DatasetBuild, build_dataset
from patentqa.data.corpus import Question
from patentqa.data.prompts import PromptConfig
from patentqa.data.retrieval import style_examples
from patentqa.infer.engines import make_engine
from patentqa.infer.pipeline import AnswerContext, PipelineSettings, answer_questions, read_predictions, \
    write_submission
from patentqa.tracking import write_json_atomic

SPLITS = {"test": "the competition's test split (unlabelled)", "dev": "our labelled dev split",
          "heldout": "our labelled test split"}


def split_questions(build: DatasetBuild, split: str) -> list[Question]:
    """Questions of a CLI split: ``test`` = unlabelled competition split; ``dev``/``heldout`` = labelled."""
    if split == "test":
        if build.unlabelled is None:
            raise ValueError("this dataset has no unlabelled test split (data.test_split)")
        return build.unlabelled.questions
    if split in ("dev", "heldout"):
        return build.questions["dev" if split == "dev" else "test"]
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")


def answer_context(cfg: DictConfig, build: DatasetBuild, questions: list[Question]) -> AnswerContext:
    """Prompts, pages, the prepared retriever, and style examples drawn from training questions only."""
    style = style_examples(questions, build.questions["train"], cfg.retrieval.style_examples,
                           build.retriever.similarity)
    return AnswerContext(PromptConfig.from_cfg(cfg.prompt), build.documents, build.pages.paths, build.retriever, style,
                         layout=build.layout)


def output_dir(cfg: DictConfig) -> Path:
    """Deterministic, so running the same command again resumes into the same files."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    tag = Path(cfg.checkpoint).name if cfg.checkpoint else "base"
    return Path(cfg.paths.runs_dir) / cfg.name / "predictions" / f"{cfg.split}-{tag}"


def infer(cfg: DictConfig) -> dict[str, Any]:
    """Answer every question of ``cfg.split``; write predictions.jsonl, submission.jsonl and summary.json."""
    build = build_dataset(cfg)
    questions = split_questions(build, cfg.split)
    out = output_dir(cfg)
    ctx = answer_context(cfg, build, questions)
    engine = make_engine(cfg.infer, cfg.model, [cfg.checkpoint] if cfg.checkpoint else [])  # vLLM sizes its LoRA
    try:
        summary = answer_questions(questions, ctx, engine, PipelineSettings.from_cfg(cfg.pipeline, cfg.infer),
                                   out / "predictions.jsonl", adapter=cfg.checkpoint)
    finally:
        engine.close()
    write_submission(out / "submission.jsonl", questions, read_predictions(out / "predictions.jsonl"))
    summary.update(split=cfg.split, checkpoint=cfg.checkpoint, out_dir=str(out), engine=cfg.infer.name)
    write_json_atomic(out / "summary.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    return json.dumps(summary, ensure_ascii=False, indent=2)
