"""The data stage, top to bottom: corpus → validation → document split → page images → manifest.

``build_dataset(cfg)`` is what ``python -m patentqa.data +exp=NAME`` runs; later stages call
it too (it is cached: a second run renders nothing and reads the manifest it wrote).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from patentqa.data.corpus import DataError, Question, SplitData, file_sha256, problems_as_dicts, read_split
from patentqa.data.pages import RenderResult, RenderSpec, render_documents
from patentqa.data.questions import parse_question
from patentqa.data.split import SPLITS, DocumentSplit, split_documents, split_questions

log = logging.getLogger(__name__)


@dataclass
class DatasetBuild:
    """Everything the data stage produced, for the stages after it."""

    out_dir: Path
    questions: dict[str, list[Question]]   # labelled questions per split: train / dev / test
    unlabelled: SplitData | None           # the competition's test split (no answers), if present
    split: DocumentSplit
    pages: RenderResult
    manifest: dict[str, Any]


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON via a temp file and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(payload, out, ensure_ascii=False, indent=2, sort_keys=True)
    os.replace(tmp, path)


def render_spec(cfg: DictConfig) -> RenderSpec:
    """Pages are rendered once at the largest per-image budget any prompt uses."""
    pages = cfg.data.pages
    return RenderSpec(max_pixels=max(cfg.prompt.max_pixels.values()), min_pixels=cfg.prompt.min_pixels,
                      factor=cfg.model.image_factor, colorspace=pages.colorspace, format=pages.format,
                      jpeg_quality=pages.jpeg_quality)


def dataset_key(cfg: DictConfig) -> str:
    """Short hash of the config that decides the dataset's content."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "prompt", "retrieval")}
    parts["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def ensure_corpus(cfg: DictConfig) -> Path:
    """The dataset dir; a synthetic set is generated there first if it is missing."""
    data_dir = Path(cfg.data.dir)
    if cfg.data.synth is not None and not (data_dir / cfg.data.train_split).is_dir():
        from patentqa.data.synth import SynthSpec, generate

        log.info("generating synthetic patents into %s", data_dir)
        generate(data_dir, SynthSpec(**OmegaConf.to_container(cfg.data.synth, resolve=True)))
    return data_dir


def ensure_tiny_models(cfg: DictConfig) -> None:
    """Build the tiny test models on first use (model=tiny)."""
    if cfg.model.get("build_tiny"):
        from patentqa.tiny import tiny_qwen2_5_vl, tiny_qwen2_vl_embedder

        tiny_qwen2_5_vl(Path(cfg.model.path).parent)
        if cfg.model.get("embedder_path"):
            tiny_qwen2_vl_embedder(Path(cfg.model.embedder_path).parent)


def build_dataset(cfg: DictConfig) -> DatasetBuild:
    """Run the data stage for ``cfg`` and return what it built."""
    started = time.perf_counter()
    data_dir = ensure_corpus(cfg)
    train_data = read_split(data_dir, cfg.data.train_split, strict=cfg.strict)
    test_dir = data_dir / cfg.data.test_split
    test_data = read_split(data_dir, cfg.data.test_split, strict=cfg.strict, require_answer=False) \
        if test_dir.is_dir() else None
    split = split_documents(train_data.documents, cfg.data.split.dev, cfg.data.split.test, cfg.seed)
    questions = split_questions(train_data.questions, split)
    documents = list(train_data.documents.values()) + (list(test_data.documents.values()) if test_data else [])
    spec = render_spec(cfg)
    pages = render_documents(documents, Path(cfg.paths.cache_dir) / "pages", spec, workers=cfg.data.pages.workers)
    if cfg.strict and pages.problems:
        raise DataError("\n".join(str(p) for p in pages.problems))
    ensure_tiny_models(cfg)
    out_dir = Path(cfg.paths.cache_dir) / "datasets" / f"{cfg.data.name}-{dataset_key(cfg)}"
    manifest = _manifest(cfg, data_dir, train_data, test_data, split, questions, pages, spec)
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(out_dir / "manifest.json", manifest)
    log.info("dataset %s: questions %s, %d pages rendered, %d cached, %d problems", out_dir.name,
             {k: len(v) for k, v in questions.items()}, pages.rendered, pages.cached, manifest["problems"]["count"])
    return DatasetBuild(out_dir, questions, test_data, split, pages, manifest)


def _kinds(questions: list[Question]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for question in questions:
        kind = parse_question(question.question).kind
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def _manifest(cfg: DictConfig, data_dir: Path, train_data: SplitData, test_data: SplitData | None,
              split: DocumentSplit, questions: dict[str, list[Question]],
              pages: RenderResult, spec: RenderSpec) -> dict[str, Any]:
    problems = train_data.problems + (test_data.problems if test_data else []) + pages.problems
    pdf_hashes = sorted(f"{d.name}:{d.sha256}" for d in train_data.documents.values())
    return {
        "dataset_key": dataset_key(cfg),
        "data_dir": str(data_dir.resolve()),
        "seed": cfg.seed,
        "inputs": {"labelled": train_data.summary(), "unlabelled": test_data.summary() if test_data else None},
        "documents": {name: list(split.of(name)) for name in SPLITS},
        "questions": {**{name: len(qs) for name, qs in questions.items()},
                      "unlabelled": len(test_data.questions) if test_data else 0},
        "kinds": {name: _kinds(qs) for name, qs in questions.items()},
        "pages": {"spec": spec.key(), "rendered": pages.rendered, "cached": pages.cached,
                  "total": len(pages.paths)},
        "corpus_hash": hashlib.sha256("\n".join(pdf_hashes).encode()).hexdigest(),
        "question_files": {s: file_sha256(data_dir / s / f"{s}.jsonl")
                           for s in (cfg.data.train_split, cfg.data.test_split)
                           if (data_dir / s / f"{s}.jsonl").is_file()},
        "problems": {"count": len(problems), "items": problems_as_dicts(problems)},
    }
