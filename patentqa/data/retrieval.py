"""Which pages a question is shown besides the asked one, and which training answers show the style.

One interface, chosen by ``cfg.retrieval.name`` (``conf/retrieval/*.yaml``):

- ``none``: page questions see the asked page only; whole-patent questions pages 1..k;
- ``oracle``: the gold ``evidence_pages`` (synthetic data) minus the asked page, at most k;
  questions without evidence fall back to ``none`` — an upper bound for ablations;
- ``gme``: cosine similarity of the question's GME embedding to every page of the same
  document; top k+1, the asked page dropped, k kept (the seed's behaviour);
- ``bm25``: BM25 (``bm25s``) of the question's jieba words against each page's OCR text, one
  index per document (needs the OCR layer);
- ``hybrid``: BM25 and GME fused by reciprocal rank: a page scores
  ``1 / (RRF_K + rank_bm25) + 1 / (RRF_K + rank_gme)`` (ranks from 1, RRF_K = 60, Cormack et
  al. 2009), so neither score's scale matters, only each ranking.

Context pages are always sorted by page number and never include the asked page.
``style_examples`` gives the answers of the most similar *training* questions (GME question
embeddings with ``gme``, else a deterministic character n-gram hashing embedding: one cosine
code path for both). ``recall_at_k`` measures a retriever against the gold evidence pages.
"""
from __future__ import annotations

import functools
import logging
import unicodedata
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from patentqa.data.corpus import Document, Question
from patentqa.data.embed import DEFAULT_INSTRUCTION, GmeEmbedder
from patentqa.data.questions import ParsedQuestion, parse_question

log = logging.getLogger(__name__)

PageKey = tuple[str, int]
TextEmbedder = Callable[[list[str]], np.ndarray]  # texts -> (n, dim) L2-normalised rows
RRF_K = 60  # reciprocal-rank fusion constant (hybrid)
LEXICAL_DIM = 4096
LEXICAL_NGRAMS = (1, 2, 3)


@functools.lru_cache(maxsize=1 << 16)
def parsed(text: str) -> ParsedQuestion:
    """``parse_question``, once per question text: every retriever asks each question's page for
    every k of the recall table (a frozen dataclass, safe to share)."""
    return parse_question(text)


def lexical_embed(texts: list[str], dim: int = LEXICAL_DIM, ngrams: tuple[int, ...] = LEXICAL_NGRAMS) -> np.ndarray:
    """Character n-gram hashing vectors (NFKC, whitespace removed, crc32 buckets), L2-normalised."""
    matrix = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        chars = "".join(unicodedata.normalize("NFKC", text).split())
        for n in ngrams:
            for start in range(len(chars) - n + 1):
                matrix[row, zlib.crc32(chars[start:start + n].encode("utf-8")) % dim] += 1.0
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


class Retriever(Protocol):
    """What the prompt builder and the data stage need from a retriever."""

    name: str
    k: int
    similarity: TextEmbedder

    def prepare(self, questions: list[Question], documents: Mapping[str, Document]) -> None:
        """Compute everything ``context_pages`` needs for these questions, batched."""

    def context_pages(self, question: Question, document: Document) -> list[int]:
        """Pages shown besides the asked page: sorted, same document, never the asked page, at most k."""


def _available(document: Document, pages: Mapping[PageKey, Path] | None) -> list[int]:
    """1-based pages of ``document`` that have an image (all of them when ``pages`` is None)."""
    return [p for p in range(1, document.page_count + 1) if pages is None or (document.name, p) in pages]


def _first_pages(question: Question, document: Document, k: int, pages: Mapping[PageKey, Path] | None) -> list[int]:
    """``none``: nothing for page questions, the first k pages for whole-patent questions."""
    if parsed(question.question).page is not None:
        return []
    return _available(document, pages)[:k]


class NoRetriever:
    """The asked page alone (page questions) or the first k pages (whole-patent questions)."""

    name = "none"

    def __init__(self, k: int, pages: Mapping[PageKey, Path] | None = None) -> None:
        self.k, self.pages = int(k), pages
        self.similarity: TextEmbedder = lexical_embed

    def prepare(self, questions: list[Question], documents: Mapping[str, Document]) -> None:
        pass

    def context_pages(self, question: Question, document: Document) -> list[int]:
        return _first_pages(question, document, self.k, self.pages)


class OracleRetriever(NoRetriever):
    """Gold evidence pages minus the asked page (at most k, sorted); ``none`` without evidence."""

    name = "oracle"

    def context_pages(self, question: Question, document: Document) -> list[int]:
        evidence = question.extra.get("evidence_pages")
        if not evidence:
            return super().context_pages(question, document)
        asked = parsed(question.question).page
        allowed = set(_available(document, self.pages))
        return sorted({int(p) for p in evidence if int(p) != asked and int(p) in allowed})[:self.k]


class GmeRetriever:
    """Top-k pages of the same document by cosine similarity of GME embeddings."""

    name = "gme"

    def __init__(self, k: int, pages: Mapping[PageKey, Path], embedder: GmeEmbedder) -> None:
        self.k, self.pages, self.embedder = int(k), pages, embedder
        self.similarity: TextEmbedder = embedder.embed_queries
        self._doc_pages: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (page numbers, page matrix)
        self._queries: dict[str, np.ndarray] = {}

    def prepare(self, questions: list[Question], documents: Mapping[str, Document]) -> None:
        """Embed every page of the questions' documents and every question text, in big batches."""
        names = list(dict.fromkeys(q.document for q in questions if q.document in documents))
        todo = [(name, p) for name in names if name not in self._doc_pages
                for p in _available(documents[name], self.pages)]
        if todo:
            matrix = self.embedder.embed_pages([self.pages[key] for key in todo])
            for name in dict.fromkeys(name for name, _ in todo):
                rows = [i for i, (n, _) in enumerate(todo) if n == name]
                self._doc_pages[name] = (np.array([todo[i][1] for i in rows]), matrix[rows])
        texts = list(dict.fromkeys(q.question for q in questions if q.question not in self._queries))
        if texts:
            self._queries.update(zip(texts, self.embedder.embed_queries(texts)))

    def scores(self, question: Question, document: Document) -> tuple[np.ndarray, np.ndarray]:
        """(page numbers, cosine similarity of the question to each page)."""
        if document.name not in self._doc_pages or question.question not in self._queries:
            self.prepare([question], {document.name: document})
        numbers, matrix = self._doc_pages.get(document.name, (np.zeros(0, dtype=int), np.zeros((0, 0))))
        if not len(numbers):
            return numbers, np.zeros(0, dtype=np.float32)
        return numbers, matrix @ self._queries[question.question]

    def context_pages(self, question: Question, document: Document) -> list[int]:
        numbers, scores = self.scores(question, document)
        return _top(numbers, scores, parsed(question.question).page, self.k)


def words(text: str) -> list[str]:
    """jieba words of a text (NFKC, whitespace and punctuation dropped): BM25's terms."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w for w in jieba.lcut(unicodedata.normalize("NFKC", text)) if w.strip() and any(c.isalnum() for c in w)]


def _top(numbers: np.ndarray, scores: np.ndarray, asked: int | None, k: int) -> list[int]:
    """Best k pages but the asked one (ties to the lower page), sorted by page number."""
    order = np.lexsort((numbers, -scores))
    top = [int(numbers[i]) for i in order[:k + 1]]
    return sorted([p for p in top if p != asked][:k])


class Bm25Retriever:
    """Top-k pages of the same document by BM25 over their OCR text (see module doc)."""

    name = "bm25"

    def __init__(self, k: int, pages: Mapping[PageKey, Path], layout: Any) -> None:
        if layout is None:
            raise ValueError("retrieval=bm25 and hybrid need the OCR layer: set data.ocr.enabled to auto or true")
        self.k, self.pages, self.layout = int(k), pages, layout
        self.similarity: TextEmbedder = lexical_embed
        self._indexes: dict[str, tuple[np.ndarray, Any]] = {}

    def prepare(self, questions: list[Question], documents: Mapping[str, Document]) -> None:
        import bm25s

        for name in dict.fromkeys(q.document for q in questions if q.document in documents):
            if name in self._indexes:
                continue
            numbers = [p for p in _available(documents[name], self.pages) if self.layout.text(name, p) is not None]
            index = bm25s.BM25()
            if numbers:
                index.index([words(self.layout.text(name, p)) or ["_"] for p in numbers], show_progress=False)
            self._indexes[name] = (np.array(numbers, dtype=int), index if numbers else None)

    def scores(self, question: Question, document: Document) -> tuple[np.ndarray, np.ndarray]:
        if document.name not in self._indexes:
            self.prepare([question], {document.name: document})
        numbers, index = self._indexes[document.name]
        if index is None:
            return numbers, np.zeros(0, dtype=np.float32)
        terms = words(question.question) or ["_"]
        return numbers, np.asarray(index.get_scores(terms), dtype=np.float32)

    def context_pages(self, question: Question, document: Document) -> list[int]:
        numbers, scores = self.scores(question, document)
        return _top(numbers, scores, parsed(question.question).page, self.k) if len(numbers) else \
            _first_pages(question, document, self.k, self.pages)


class HybridRetriever:
    """BM25 and GME fused by reciprocal rank (see module doc)."""

    name = "hybrid"

    def __init__(self, k: int, bm25: Bm25Retriever, gme: GmeRetriever) -> None:
        self.k, self.bm25, self.gme = int(k), bm25, gme
        self.similarity: TextEmbedder = gme.similarity

    def prepare(self, questions: list[Question], documents: Mapping[str, Document]) -> None:
        self.bm25.prepare(questions, documents)
        self.gme.prepare(questions, documents)

    def context_pages(self, question: Question, document: Document) -> list[int]:
        fused: dict[int, float] = {}
        for numbers, scores in (self.bm25.scores(question, document), self.gme.scores(question, document)):
            for rank, i in enumerate(np.lexsort((numbers, -scores)), start=1):
                fused[int(numbers[i])] = fused.get(int(numbers[i]), 0.0) + 1.0 / (RRF_K + rank)
        if not fused:
            return _first_pages(question, document, self.k, self.gme.pages)
        numbers = np.array(sorted(fused))
        return _top(numbers, np.array([fused[n] for n in numbers]), parsed(question.question).page, self.k)


RETRIEVERS = ("none", "oracle", "gme", "bm25", "hybrid")


def make_retriever(retrieval_cfg: Mapping[str, Any], pages: Mapping[PageKey, Path],
                   cache_dir: str | Path, layout: Any = None) -> Retriever:
    """The retriever named by ``retrieval_cfg.name`` (one of ``RETRIEVERS``); bm25 and hybrid need ``layout``."""
    name, k = retrieval_cfg["name"], int(retrieval_cfg["k"])
    if name == "none":
        return NoRetriever(k, pages)
    if name == "oracle":
        return OracleRetriever(k, pages)
    if name == "bm25":
        return Bm25Retriever(k, pages, layout)
    if name == "hybrid":
        return HybridRetriever(k, Bm25Retriever(k, pages, layout), make_retriever({**retrieval_cfg, "name": "gme"},
                                                                                  pages, cache_dir))
    if name == "gme":
        embedder = GmeEmbedder(
            retrieval_cfg["model_path"], cache_dir,
            min_pixels=int(retrieval_cfg["min_pixels"]), max_pixels=int(retrieval_cfg["max_pixels"]),
            query_instruction=retrieval_cfg["query_instruction"],
            document_instruction=retrieval_cfg.get("document_instruction", DEFAULT_INSTRUCTION),
            batch_size=int(retrieval_cfg.get("batch_size", 8)), device=retrieval_cfg.get("device"),
            dtype=retrieval_cfg.get("dtype"), positions=retrieval_cfg.get("positions", "sequential"),
            hub=retrieval_cfg.get("hub") or "huggingface")
        return GmeRetriever(k, pages, embedder)
    raise ValueError(f"unknown retrieval.name {name!r} (expected one of {', '.join(RETRIEVERS)})")


def style_examples(queries: list[Question], train: list[Question], k: int,
                   similarity: TextEmbedder | None = None, *,
                   exclude_same_document: bool = True) -> dict[str, list[str]]:
    """Answers of the k training questions most similar to each query (by id).

    Only ``train`` is the pool (the caller passes training-split questions). A query never
    gets itself (same id, or same document and text) and, by default, nothing from its own
    document, so a training row cannot copy an answer about the same patent.
    """
    result: dict[str, list[str]] = {q.id: [] for q in queries}
    pool = [t for t in train if t.answer]
    if k <= 0 or not queries or not pool:
        return result
    embed = similarity or lexical_embed
    query_matrix = np.asarray(embed([q.question for q in queries]), dtype=np.float32)
    pool_matrix = np.asarray(embed([t.question for t in pool]), dtype=np.float32)
    scores = query_matrix @ pool_matrix.T
    for row, query in enumerate(queries):
        chosen: list[str] = []
        for j in np.argsort(-scores[row], kind="stable"):
            other = pool[j]
            if other.id == query.id or (other.document, other.question) == (query.document, query.question):
                continue
            if exclude_same_document and other.document == query.document:
                continue
            chosen.append(other.answer)
            if len(chosen) == k:
                break
        result[query.id] = chosen
    return result


def question_kind(question: Question) -> str:
    """The routing kind (figure_position / figure_other / document) of a question."""
    return parsed(question.question).kind


def recall_report(retriever: Retriever, questions: list[Question],
                  documents: Mapping[str, Document]) -> dict[str, dict[str, float]]:
    """Per kind (and ``all``): mean recall of gold evidence pages other than the asked page,
    the questions scored, and the questions skipped (no such evidence)."""
    usable = [q for q in questions if q.document in documents]
    retriever.prepare(usable, documents)
    sums: dict[str, list[float]] = {}
    skipped: dict[str, int] = {}
    for question in usable:
        kind = question_kind(question)
        asked = parsed(question.question).page
        gold = {int(p) for p in question.extra.get("evidence_pages") or []} - {asked}
        if not gold:
            skipped[kind] = skipped.get(kind, 0) + 1
            continue
        shown = set(retriever.context_pages(question, documents[question.document]))
        sums.setdefault(kind, []).append(len(gold & shown) / len(gold))
    report: dict[str, dict[str, float]] = {}
    for kind in sorted(set(sums) | set(skipped)):
        values = sums.get(kind, [])
        report[kind] = {"recall": float(np.mean(values)) if values else None,
                        "scored": len(values), "skipped": skipped.get(kind, 0)}
    every = [v for values in sums.values() for v in values]
    report["all"] = {"recall": float(np.mean(every)) if every else None, "scored": len(every),
                     "skipped": sum(skipped.values())}
    return report


def recall_at_k(retriever: Retriever, questions: list[Question],
                documents: Mapping[str, Document]) -> dict[str, float]:
    """Recall@k per question kind and ``all`` (kinds with no scorable question are left out)."""
    report = recall_report(retriever, questions, documents)
    log.info("recall@%d (%s): %s", retriever.k, retriever.name, report)
    return {kind: row["recall"] for kind, row in report.items() if row["scored"]}
