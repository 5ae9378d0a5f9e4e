"""Answer metrics: pure per-item functions in a small registry, each with a named aggregation.

Each metric is ``(prediction, answer) -> float`` registered with ``@register_metric`` (the
lm-evaluation-harness pattern) together with the name of its aggregation (``mean``) in
``AGGREGATIONS``. An empty prediction scores 0 on every metric and is counted, never skipped.

- ``char_f1``: character-unigram F1, whitespace removed (the AGCUT reproduction's ``rouge1_f1``).
- ``char_rouge_l``: LCS F1 over characters, whitespace removed.
- ``exact_match``: NFKC, lowercase, whitespace/punctuation/symbols dropped (letters, digits, marks kept).
- ``accuracy``: round A, the parsed option letter equals the gold letter; a round-A item's
  ``composite`` is its accuracy (items carry ``round``), a round-B item's the weighted score.
- ``exact_match_agcut``: AGCUT's rule, ``re.sub(r"[^\\w\\s]", "", s.lower()).strip()``.
- ``word_rouge1``/``word_rouge_l``: ``rouge_score`` over jieba tokens (its default tokenizer drops Chinese).
- ``bertscore``: only after ``configure_bertscore(model_path)`` (a local model; nothing is downloaded).

``composite`` weighs per-item scores ("F1 and ROUGE" by default; ``agcut`` preset: 0.5·BERTScore +
0.25·char ROUGE-1 + 0.25·EM). ``score_items`` gives the per-item rows that ``patentqa.eval.aggregate``
summarises (each metric by its named aggregation, with bootstrap CIs).
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

MetricFn = Callable[[str, str], float]
BatchFn = Callable[[list[str], list[str]], list[float]]
AggregationFn = Callable[[np.ndarray], np.ndarray]  # reduces the last axis


@dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    aggregation: str = "mean"
    higher_is_better: bool = True
    batch: BatchFn | None = None  # optional batched form (model-based metrics); same values as ``fn``


class MetricUnavailable(RuntimeError):
    """A metric was asked for that is not registered or cannot run here (with what to do about it)."""


METRICS: dict[str, Metric] = {}
AGGREGATIONS: dict[str, AggregationFn] = {}
COMPOSITE = "composite"  # the per-item weighted score's name in score dicts
# Named weight presets. Weights are relative (divided by their sum); every named metric must be scored.
PRESETS: dict[str, dict[str, float]] = {
    "default": {"char_f1": 0.5, "char_rouge_l": 0.5},                       # the task: "F1 and ROUGE"
    "agcut": {"bertscore": 0.5, "char_f1": 0.25, "exact_match_agcut": 0.25},  # public reproduction
}


def register_aggregation(name: str) -> Callable[[AggregationFn], AggregationFn]:
    """Register ``fn(values[..., n]) -> values[...]`` (reduces the last axis) under ``name``."""
    def wrap(fn: AggregationFn) -> AggregationFn:
        AGGREGATIONS[name] = fn
        return fn
    return wrap


def register_metric(name: str, aggregation: str = "mean", higher_is_better: bool = True,
                    batch: BatchFn | None = None) -> Callable[[MetricFn], MetricFn]:
    """Register a per-item metric ``fn(prediction, answer) -> float`` under ``name``."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r} (known: {sorted(AGGREGATIONS)})")
    if name == COMPOSITE:
        raise ValueError(f"{COMPOSITE!r} is reserved for the weighted score")

    def wrap(fn: MetricFn) -> MetricFn:
        METRICS[name] = Metric(name, fn, aggregation, higher_is_better, batch)
        return fn
    return wrap


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; a clear error when it is unknown or not configured."""
    if name in METRICS:
        return METRICS[name]
    if name == "bertscore":
        raise MetricUnavailable("metric 'bertscore' is not configured: set eval.bertscore.model_path to a "
                                "local model directory (nothing is downloaded), or drop it from the metrics")
    raise MetricUnavailable(f"unknown metric {name!r} (available: {', '.join(available_metrics())})")


def available_metrics() -> list[str]:
    return sorted(METRICS)


@register_aggregation("mean")
def mean(values: np.ndarray) -> np.ndarray:
    return np.mean(values, axis=-1)


# ---------------------------------------------------------------- normalisation and the metrics

_WHITESPACE = re.compile(r"\s+")
_AGCUT_DROP = re.compile(r"[^\w\s]")


def is_empty(prediction: str) -> bool:
    """Empty or whitespace-only: scores 0 everywhere, counted in ``n`` and ``n_empty``."""
    return not prediction.strip()


def strip_whitespace(text: str) -> str:
    return _WHITESPACE.sub("", text)


def normalize_em(text: str) -> str:
    """Our EM form: NFKC (full-width → ASCII), lowercase, keep only letters, digits and marks."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in text if unicodedata.category(c)[0] in "LNM")


def normalize_em_agcut(text: str) -> str:
    """AGCUT's EM form: lowercase, drop ``[^\\w\\s]`` (keeps inner whitespace and ``_``), strip."""
    return _AGCUT_DROP.sub("", text.lower()).strip()


def _f1(overlap: int, n_pred: int, n_gold: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / n_pred, overlap / n_gold
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence (one-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


@register_metric("char_f1")
def char_f1(prediction: str, answer: str) -> float:
    """Character-unigram F1 (multiset overlap) after removing all whitespace."""
    pred, gold = strip_whitespace(prediction), strip_whitespace(answer)
    if not pred or not gold:
        return 0.0
    return _f1(sum((Counter(pred) & Counter(gold)).values()), len(pred), len(gold))


@register_metric("char_rouge_l")
def char_rouge_l(prediction: str, answer: str) -> float:
    """ROUGE-L F1 over characters (LCS-based) after removing all whitespace."""
    pred, gold = strip_whitespace(prediction), strip_whitespace(answer)
    if not pred or not gold:
        return 0.0
    return _f1(lcs_length(pred, gold), len(pred), len(gold))


@register_metric("exact_match")
def exact_match(prediction: str, answer: str) -> float:
    """1.0 when both sides agree after ``normalize_em``; an empty normalised prediction never matches."""
    pred = normalize_em(prediction)
    return float(bool(pred) and pred == normalize_em(answer))


@register_metric("accuracy")
def accuracy(prediction: str, answer: str) -> float:
    """Round A: the parsed option letter equals the gold letter (an unparsed reply is "" and scores 0)."""
    from patentqa.data.choices import normalize_letter

    return float(normalize_letter(prediction) == normalize_letter(answer))


@register_metric("exact_match_agcut")
def exact_match_agcut(prediction: str, answer: str) -> float:
    """AGCUT's EM (reproduces its ``exact_match`` column); an empty prediction scores 0."""
    if is_empty(prediction):
        return 0.0
    return float(normalize_em_agcut(prediction) == normalize_em_agcut(answer))


class JiebaTokenizer:
    """``rouge_score`` tokenizer: lowercase, jieba words, whitespace tokens dropped."""

    def tokenize(self, text: str) -> list[str]:
        return list(_jieba_tokens(text))


@lru_cache(maxsize=65536)
def _jieba_tokens(text: str) -> tuple[str, ...]:
    import jieba

    jieba.setLogLevel(logging.WARNING)  # no "Building prefix dict..." chatter
    return tuple(t for t in jieba.lcut(text.lower()) if t.strip())


@lru_cache(maxsize=None)
def _rouge_scorer(rouge_type: str) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([rouge_type], tokenizer=JiebaTokenizer())


@register_metric("word_rouge1")
def word_rouge1(prediction: str, answer: str) -> float:
    """ROUGE-1 F over jieba words (``rouge_score`` with a jieba tokenizer)."""
    if is_empty(prediction):
        return 0.0
    return float(_rouge_scorer("rouge1").score(answer, prediction)["rouge1"].fmeasure)


@register_metric("word_rouge_l")
def word_rouge_l(prediction: str, answer: str) -> float:
    """ROUGE-L F over jieba words (``rouge_score`` with a jieba tokenizer)."""
    if is_empty(prediction):
        return 0.0
    return float(_rouge_scorer("rougeL").score(answer, prediction)["rougeL"].fmeasure)


# ---------------------------------------------------------------- BERTScore (opt-in, local model)

def configure_bertscore(model_path: str | None, num_layers: int | None = None, batch_size: int = 64,
                        device: str | None = None, lang: str = "zh") -> bool:
    """Register ``bertscore`` (F1) for a local model; no path → not registered (returns False).

    Fails now, with what to do, when the model directory is missing or ``bert_score`` is not
    installed; the package and the model are loaded on first use only.
    """
    METRICS.pop("bertscore", None)
    if not model_path:
        return False
    if not Path(model_path).is_dir():
        raise MetricUnavailable(f"eval.bertscore.model_path {model_path!r} is not a directory "
                                "(a local model is required; nothing is downloaded)")
    if importlib.util.find_spec("bert_score") is None:
        raise MetricUnavailable("eval.bertscore.model_path is set but the `bert_score` package is not "
                                "installed: `pip install bert-score`, or unset eval.bertscore.model_path")
    scorer: list[Any] = []  # filled on first use

    def batch(predictions: list[str], answers: list[str]) -> list[float]:
        if not scorer:
            bert_score = importlib.import_module("bert_score")
            try:
                scorer.append(bert_score.BERTScorer(model_type=model_path, num_layers=num_layers, lang=lang,
                                                    batch_size=batch_size, device=device))
            except KeyError as error:  # bert_score's layer table does not know a local path
                raise MetricUnavailable(f"bert_score needs eval.bertscore.num_layers for {model_path}") from error
        _, _, f1 = scorer[0].score(predictions, answers)
        return [float(x) for x in f1.tolist()]

    def bertscore(prediction: str, answer: str) -> float:
        return 0.0 if is_empty(prediction) else batch([prediction], [answer])[0]

    register_metric("bertscore", batch=batch)(bertscore)
    return True


# ---------------------------------------------------------------- composite and per-item scoring

def resolve_weights(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """Weights from a preset name (``default``, ``agcut``), a ``{metric: weight}`` map, or None (default)."""
    if spec is None:
        spec = "default"
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown composite preset {spec!r} (known: {', '.join(PRESETS)})")
        return dict(PRESETS[spec])
    weights = {str(k): float(v) for k, v in spec.items()}
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"composite weights must be non-negative with a positive sum: {weights}")
    return weights


def composite(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """``Σ w·score / Σ w``; every weighted metric must be present (no silent renormalisation)."""
    missing = [name for name in weights if name not in scores]
    if missing:
        raise MetricUnavailable(f"composite needs {', '.join(missing)}, which was not scored"
                                + (" (bertscore needs eval.bertscore.model_path)" if "bertscore" in missing else ""))
    total = sum(weights.values())
    return sum(w * scores[name] for name, w in weights.items()) / total


def metrics_for(items: Sequence[Mapping[str, Any]], metric_names: Iterable[str]) -> list[str]:
    """The metrics reported for ``items``: those asked for, plus ``accuracy`` when a round-A item is among them."""
    names = list(metric_names)
    return names + (["accuracy"] if "accuracy" not in names and any(i.get("round") == "a" for i in items) else [])


def score_items(items: Sequence[Mapping[str, Any]], metric_names: Iterable[str],
                weights: Mapping[str, float] | None = None,
                keep: Iterable[str] = ("id", "kind")) -> list[dict[str, Any]]:
    """Per-item ``{"empty", "scores": {metric: value[, "composite"]}}`` plus the ``keep`` fields present.

    Metrics named in ``weights`` are scored too; an unknown or unconfigured one is an error. A round-A
    item (``round`` "a") gets ``accuracy`` and a composite equal to it, and no open-answer metric.
    """
    metric_names = list(metric_names)
    choice = [item.get("round") == "a" for item in items]
    names = list(dict.fromkeys([*metrics_for(items, metric_names), *(weights or {})]))
    metrics = [get_metric(name) for name in names]
    predictions = [str(item["prediction"]) for item in items]
    answers = [str(item["answer"]) for item in items]
    empty = [is_empty(p) for p in predictions]
    columns: dict[str, list[float]] = {}
    for metric in metrics:
        if metric.batch is not None:
            todo = [i for i, e in enumerate(empty) if not e]
            values = dict(zip(todo, metric.batch([predictions[i] for i in todo], [answers[i] for i in todo])))
            columns[metric.name] = [float(values.get(i, 0.0)) for i in range(len(items))]
        else:
            columns[metric.name] = [0.0 if e else float(metric.fn(p, a))
                                    for p, a, e in zip(predictions, answers, empty)]
    keep = tuple(keep)
    open_names = [n for n in names if n != "accuracy" or n in metric_names]
    rows = []
    for i, item in enumerate(items):
        if choice[i]:  # a multiple-choice item is scored by its own metric only (F1 of a letter means nothing)
            scores = {"accuracy": columns["accuracy"][i], COMPOSITE: columns["accuracy"][i]}
        else:
            scores = {name: columns[name][i] for name in open_names}
        if not choice[i] and weights:
            scores[COMPOSITE] = composite(scores, weights)
        row = {k: item[k] for k in keep if k in item}
        rows.append({**row, "empty": empty[i], "scores": scores})
    return rows
