"""The data stage, top to bottom: corpus → validation → document split → page images → manifest.

``build_dataset(cfg)`` is what ``python -m patentqa.data +exp=NAME`` runs; later stages call
it too (it is cached: a second run renders nothing and reads the manifest it wrote).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from patentqa.data.chains import asking_config, cache_path, cached_chains, chain_spec, synthetic_chains
from patentqa.data.corpus import DataError, Document, Question, SplitData, file_sha256, problems_as_dicts, read_split
from patentqa.data.pages import RenderResult, RenderSpec, render_documents
from patentqa.data.prompts import PromptConfig
from patentqa.data.retrieval import RETRIEVERS, make_retriever, recall_report, style_examples
from patentqa.data.sft import PromptedQuestion, eval_record, prompted, sft_rows, write_jsonl_atomic
from patentqa.data.split import (SPLITS, DocumentSplit, LeakageError, fold_of, split_documents,
                                 split_questions)
from patentqa.tracking import write_json_atomic

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
    documents: dict[str, Document] = field(default_factory=dict)  # labelled and unlabelled
    retriever: Any = None                                         # prepared on every question
    layout: Any = None                                            # OCR layer and figure crops, when needed


def prompt_config(cfg: DictConfig) -> PromptConfig:
    """The ``prompt`` group with its token budgets in pixels for ``cfg.model``'s family (its image_factor)."""
    return PromptConfig.from_cfg(cfg.prompt, int(cfg.model.image_factor))


def render_spec(cfg: DictConfig) -> RenderSpec:
    """Pages are rendered once at the largest per-image budget any prompt uses (in pixels: the cache key
    of a Qwen2.5-VL page is what it was when budgets were written in pixels)."""
    pages = cfg.data.pages
    config = prompt_config(cfg)
    return RenderSpec(max_pixels=max(config.max_pixels.values()), min_pixels=config.min_pixels,
                      factor=cfg.model.image_factor, colorspace=pages.colorspace, format=pages.format,
                      jpeg_quality=pages.jpeg_quality,
                      color_management=pages.color_management)


def dataset_key(cfg: DictConfig) -> str:
    """Short hash of the config that decides the dataset's content."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "prompt", "retrieval")}
    parts["data"].get("pages", {}).pop("workers", None)  # how many processes render never changes a page
    parts["retrieval"].pop("hub", None)  # which hub GME's weights came from never changes an embedding
    (parts["data"].get("ocr") or {}).pop("workers", None)
    parts["seed"], parts["image_factor"] = cfg.seed, cfg.model.image_factor
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def dataset_dir(cfg: DictConfig) -> Path:
    """Where the dataset for this config is (or will be) built."""
    return Path(cfg.paths.cache_dir).resolve() / "datasets" / f"{cfg.data.name}-{dataset_key(cfg)}"


def ensure_corpus(cfg: DictConfig) -> Path:
    """The dataset dir; a synthetic set is generated there first if it is missing."""
    data_dir = Path(cfg.data.dir)
    if cfg.data.synth is None:
        return data_dir
    from patentqa.data.synth.patents import SynthSpec, generate

    spec = SynthSpec(**OmegaConf.to_container(cfg.data.synth, resolve=True))
    if not (data_dir / cfg.data.train_split).is_dir():
        log.info("generating synthetic patents into %s", data_dir)
        generate(data_dir, spec)
        return data_dir
    try:
        made = json.loads((data_dir / "synth.json").read_text(encoding="utf-8"))["spec"]
    except (OSError, ValueError, KeyError):
        return data_dir  # not a set we generated: use it as it is
    wanted = {k: v for k, v in asdict(spec).items() if k != "workers"}
    defaults = asdict(SynthSpec())  # a set written before a setting existed was made with its default
    differ = sorted(k for k in wanted if made.get(k, defaults[k]) != wanted[k])
    if differ:
        raise ValueError(
            f"{data_dir} was generated with {', '.join(f'{k}={made.get(k)}' for k in differ)}, but the config asks "
            f"for {', '.join(f'{k}={wanted[k]}' for k in differ)}; set data.dir to a new folder (or remove this one)")
    return data_dir


def ensure_tiny_models(cfg: DictConfig) -> None:
    """Build the tiny test models on first use (model=tiny)."""
    if cfg.model.get("build_tiny"):
        from patentqa.models import family_of
        from patentqa.tiny import tiny_qwen2_vl_embedder

        family_of(cfg.model).build_tiny(Path(cfg.model.path).parent, cfg.model.get("template"))
        if cfg.model.get("embedder_path"):
            tiny_qwen2_vl_embedder(Path(cfg.model.embedder_path).parent)


def ocr_needed(cfg: DictConfig) -> bool:
    """``data.ocr.enabled``: true / false, or auto = a prompt variant, retriever or baseline reads it."""
    ocr = cfg.data.get("ocr") or {}
    enabled = ocr.get("enabled", "auto")
    if enabled != "auto":
        return bool(enabled)
    return (prompt_config(cfg).uses_layout or cfg.retrieval.name in ("bm25", "hybrid")
            or "label_geometry" in list(cfg.eval.get("baselines") or []))


def build_layout(cfg: DictConfig, documents: dict[str, Document], spec: RenderSpec) -> Any:
    """The OCR layer of every page (cached per page) wrapped for prompts and retrievers."""
    from patentqa.data.ocr.layout import Layout
    from patentqa.data.ocr.reader import OcrSpec, ocr_documents

    ocr = cfg.data.get("ocr") or {}
    result = ocr_documents(sorted(documents.values(), key=lambda d: d.name), Path(cfg.paths.cache_dir) / "ocr",
                           OcrSpec(dpi=int(ocr.get("dpi", OcrSpec.dpi))), workers=ocr.get("workers"))
    return Layout(result, documents, Path(cfg.paths.cache_dir).resolve() / "crops", spec)


def recall_table(cfg: DictConfig, pages: dict, questions: list[Question], documents: dict[str, Document],
                 retriever: Any, layout: Any, ks: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    """Recall@k (k = 1, 2, 3) by question kind for each retriever of ``data.recall_table``; text
    retrievers without an OCR layer are listed as skipped."""
    from patentqa.config import group_config

    table: dict[str, Any] = {}
    for name in list(cfg.data.get("recall_table") or []):
        if name not in RETRIEVERS:
            raise ValueError(f"data.recall_table: unknown retriever {name!r} (expected {', '.join(RETRIEVERS)})")
        if name in ("bm25", "hybrid") and layout is None:
            table[name] = {"skipped": "no OCR layer in this build (data.ocr.enabled)"}
            continue
        if name == cfg.retrieval.name:
            candidate = retriever
        elif name in ("none", "oracle", "bm25"):  # k (set below) is their whole config: no Hydra compose
            candidate = make_retriever({"name": name, "k": cfg.retrieval.k}, pages,
                                       Path(cfg.paths.cache_dir) / "embeddings", layout)
        else:
            merged = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # not struct: another group fits
            merged.retrieval = group_config("retrieval", "gme" if name == "hybrid" else name)
            merged.retrieval.name = name
            candidate = make_retriever(OmegaConf.to_container(merged.retrieval, resolve=True), pages,
                                       Path(cfg.paths.cache_dir) / "embeddings", layout)
        keep, table[name] = candidate.k, {}
        try:
            for k in ks:
                candidate.k = k
                table[name][f"k={k}"] = recall_report(candidate, questions, documents)
        finally:
            candidate.k = keep
    return table


def train_chains(cfg: DictConfig, data_dir: Path, questions: list[Question]) -> dict[str, str]:
    """Reasoning chains of training questions: the synthetic truth's, else ``python -m patentqa.eval.chains``'s cache."""
    if (data_dir / cfg.data.train_split / "truth").is_dir():
        return synthetic_chains(data_dir, cfg.data.train_split, [q.id for q in questions])
    path = cache_path(Path(cfg.paths.cache_dir), dataset_key(asking_config(cfg)), chain_spec(cfg))
    if not path.is_file():
        raise DataError(f"prompt.target=cot needs reasoning chains: run `python -m patentqa.eval.chains` with this "
                        f"experiment first (expected {path})")
    return cached_chains(path)


def gme_embedders(retriever: Any) -> list[Any]:
    """The GME embedders a retriever holds (gme: its own; hybrid: its GME part's); none for the others."""
    parts = [retriever, getattr(retriever, "gme", None)]
    return [part.embedder for part in parts if part is not None and hasattr(part, "embedder")]


def build_dataset(cfg: DictConfig) -> DatasetBuild:
    """Run the data stage for ``cfg`` and return what it built (cached parts are reused)."""
    started = time.perf_counter()
    data_dir = ensure_corpus(cfg)
    labelled = read_split(data_dir, cfg.data.train_split, strict=cfg.strict)
    if not labelled.questions:  # nothing to train or evaluate on: stop here, before anything is written
        reason = labelled.problems[0] if labelled.problems else "the question file holds no rows"
        raise DataError(f"no usable {cfg.data.train_split} question in {data_dir}: {reason}")
    unlabelled = read_split(data_dir, cfg.data.test_split, strict=cfg.strict, require_answer=False) \
        if (data_dir / cfg.data.test_split).is_dir() else None
    rounds = set(cfg.data.get("rounds") or ["a", "b"])
    for data in (labelled, unlabelled):  # questions of rounds this run does not train on are left out, counted
        if data is not None:
            kept = [q for q in data.questions if q.round in rounds]
            data.other_rounds = len(data.questions) - len(kept)
            data.questions[:] = kept
    folds = cfg.data.get("folds")
    split = split_documents(labelled.documents, cfg.data.split.dev, cfg.data.split.test, cfg.seed,
                            folds, int(cfg.data.get("fold") or 0))
    questions = split_questions(labelled.questions, split)
    documents = {**(unlabelled.documents if unlabelled else {}), **labelled.documents}
    spec = render_spec(cfg)
    pages = render_documents(list(documents.values()), Path(cfg.paths.cache_dir) / "pages", spec,
                             workers=cfg.data.pages.workers)
    if cfg.strict and pages.problems:
        raise DataError("\n".join(str(p) for p in pages.problems))
    ensure_tiny_models(cfg)
    layout = build_layout(cfg, documents, spec) if ocr_needed(cfg) else None
    if layout is not None and cfg.strict and layout.ocr.problems:
        raise DataError("\n".join(str(p) for p in layout.ocr.problems))
    retriever = make_retriever(cfg.retrieval, pages.paths, Path(cfg.paths.cache_dir) / "embeddings", layout)
    config = prompt_config(cfg)
    with contextlib.ExitStack() as loaded:  # GME stays loaded while the stage embeds, and is released after
        for embedder in gme_embedders(retriever):
            loaded.enter_context(embedder)
        retriever.prepare(labelled.questions + (unlabelled.questions if unlabelled else []), documents)
        items = {name: prompted(config, qs, documents, pages.paths, retriever, layout)
                 for name, qs in questions.items()}
        train_pool = [item.question for item in items["train"]]
        style = style_examples([i.question for n in ("dev", "test") for i in items[n]], train_pool,
                               cfg.retrieval.style_examples, retriever.similarity)
    with_context = cfg.data.sft.all_page_questions_with_context
    chains = train_chains(cfg, data_dir, [i.question for i in items["train"]]) if config.target == "cot" else {}
    outputs = {f"{name}.jsonl": sft_rows(config, items[name], documents, pages.paths, retriever, with_context, layout,
                                         chains if name == "train" else None)  # chains in train rows only
               for name in ("train", "dev")}
    outputs.update({f"{name}_eval.jsonl": [eval_record(i, style.get(i.question.id, [])) for i in items[name]]
                    for name in ("dev", "test")})
    out_dir = dataset_dir(cfg)
    hashes = {name: write_jsonl_atomic(out_dir / name, rows) for name, rows in outputs.items()}
    manifest = _manifest(cfg, data_dir, labelled, unlabelled, split, items, pages, spec, layout)
    manifest["outputs"] = {name: {"sha256": digest, "rows": len(outputs[name])} for name, digest in hashes.items()}
    manifest["leakage"] = leakage_checks(items, outputs, style)
    if config.target == "cot":
        manifest["chains"] = {"train_rows_with_chain": sum(r["chain"] for r in outputs["train.jsonl"]),
                              "train_rows": len(outputs["train.jsonl"]),
                              "dev_rows_with_chain": sum(r["chain"] for r in outputs["dev.jsonl"])}
    if any("evidence_pages" in q.extra for q in labelled.questions):
        manifest["retrieval"] = {"name": cfg.retrieval.name, "k": cfg.retrieval.k,
                                 "recall_at_k": recall_report(retriever, labelled.questions, documents),
                                 "recall_table": recall_table(cfg, pages.paths, labelled.questions, documents,
                                                              retriever, layout)}
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    write_json_atomic(out_dir / "manifest.json", manifest)
    log.info("dataset %s: %s rows, %d pages rendered, %d cached, %d problems, %.1fs", out_dir.name,
             {k: len(v) for k, v in outputs.items()}, pages.rendered, pages.cached,
             manifest["problems"]["count"], manifest["seconds"])
    return DatasetBuild(out_dir, questions, unlabelled, split, pages, manifest, documents, retriever, layout)


def leakage_checks(items: dict[str, list[PromptedQuestion]], outputs: dict[str, list[dict[str, Any]]],
                   style: dict[str, list[str]]) -> dict[str, Any]:
    """Prove the splits do not leak; raise ``LeakageError`` if they do."""
    docs = {name: {i.question.document for i in qs} for name, qs in items.items()}
    texts = {name: {(i.question.document, i.question.question) for i in qs} for name, qs in items.items()}
    train_rows = {(row["document"], row["id"]) for row in outputs["train.jsonl"]}
    heldout_ids = {(i.question.document, i.question.id) for n in ("dev", "test") for i in items[n]}
    train_answers = {i.question.answer for i in items["train"]}
    checks = {
        "documents_disjoint": not (docs["train"] & docs["dev"] or docs["train"] & docs["test"] or docs["dev"] & docs["test"]),
        "no_heldout_question_in_train": not (texts["train"] & (texts["dev"] | texts["test"])) and not train_rows & heldout_ids,
        "style_examples_from_train_only": all(a in train_answers for answers in style.values() for a in answers),
    }
    if not all(checks.values()):
        raise LeakageError(f"leakage checks failed: {checks}")
    generic = {i.question.question for i in items["train"]} & {i.question.question for n in ("dev", "test") for i in items[n]}
    checks["same_text_other_documents"] = len(generic)  # generic phrasings asked of different patents
    return checks


def _kinds(items: list[PromptedQuestion]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    return dict(sorted(counts.items()))


def _manifest(cfg: DictConfig, data_dir: Path, labelled: SplitData, unlabelled: SplitData | None,
              split: DocumentSplit, items: dict[str, list[PromptedQuestion]],
              pages: RenderResult, spec: RenderSpec, layout: Any = None) -> dict[str, Any]:
    ocr_problems = layout.ocr.problems if layout is not None else []
    problems = labelled.problems + (unlabelled.problems if unlabelled else []) + pages.problems + ocr_problems
    pdf_hashes = sorted(f"{d.name}:{d.sha256}" for d in labelled.documents.values())
    files = (cfg.data.train_split, cfg.data.test_split)
    return {
        "dataset_key": dataset_key(cfg),
        "data_dir": str(data_dir.resolve()),
        "seed": cfg.seed,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "inputs": {"labelled": labelled.summary(), "unlabelled": unlabelled.summary() if unlabelled else None,
                   "corpus_sha256": hashlib.sha256("\n".join(pdf_hashes).encode()).hexdigest(),
                   "question_files": {s: file_sha256(data_dir / s / f"{s}.jsonl") for s in files
                                      if (data_dir / s / f"{s}.jsonl").is_file()}},
        "documents": {name: list(split.of(name)) for name in SPLITS},
        "folds": {"k": cfg.data.folds, "fold": cfg.data.fold,
                  "of_document": fold_of(labelled.documents, cfg.data.split.test, cfg.seed, cfg.data.folds)}
        if cfg.data.get("folds") else None,
        "questions": {name: len(qs) for name, qs in items.items()},
        "kinds": {name: _kinds(qs) for name, qs in items.items()},
        "forms": {name: dict(Counter(i.prompt.form for i in qs)) for name, qs in items.items()},
        "pages": {"spec": spec.key(), "rendered": pages.rendered, "cached": pages.cached, "total": len(pages.paths)},
        "ocr": {k: v for k, v in layout.summary().items() if k != "problems"} if layout is not None else None,
        "problems": {"count": len(problems), "items": problems_as_dicts(problems)},
    }
