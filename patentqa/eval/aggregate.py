"""Per-item scores summarised: each metric by its named aggregation, overall and per group, with
percentile-bootstrap CIs (``aggregate``, ``headline``), and two runs compared item by item
(``paired_bootstrap``). numpy only; the per-item rows come from ``patentqa.eval.metrics.score_items``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from patentqa.eval.metrics import AGGREGATIONS, METRICS, AggregationFn


def _aggregation_of(name: str) -> tuple[str, AggregationFn]:
    agg = METRICS[name].aggregation if name in METRICS else "mean"  # composite: a weighted mean → mean
    return agg, AGGREGATIONS[agg]


def _resampled(values: np.ndarray, fn: AggregationFn, resamples: int, seed: int,
               chunk_elems: int = 4_000_000) -> np.ndarray:
    """``fn`` over ``resamples`` bootstrap resamples of ``values`` (rows of indices, drawn in chunks)."""
    rng = np.random.default_rng(seed)
    n = values.shape[-1]
    per_chunk = max(1, chunk_elems // max(n, 1))
    out = []
    for start in range(0, resamples, per_chunk):
        idx = rng.integers(0, n, size=(min(per_chunk, resamples - start), n))
        out.append(fn(values[..., idx]))
    return np.concatenate(out, axis=-1)


def bootstrap_ci(values: Sequence[float], aggregation: str = "mean", resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``aggregation`` over ``values`` (fixed ``seed``: reproducible)."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise ValueError("bootstrap of no values")
    if array.size == 1 or resamples <= 0:
        point = float(AGGREGATIONS[aggregation](array))
        return point, point
    stats = _resampled(array, AGGREGATIONS[aggregation], resamples, seed)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def _summary(rows: Sequence[Mapping[str, Any]], names: list[str], resamples: int, seed: int,
             confidence: float) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for name in names:
        values = [row["scores"][name] for row in rows if name in row["scores"]]
        agg, fn = _aggregation_of(name)
        if not values:
            metrics[name] = {agg: None, "ci_low": None, "ci_high": None, "n": 0}
            continue
        low, high = bootstrap_ci(values, agg, resamples, seed, confidence)
        metrics[name] = {agg: float(fn(np.asarray(values, dtype=float))), "ci_low": low, "ci_high": high}
        if len(values) != len(rows):
            metrics[name]["n"] = len(values)
    return {"n": len(rows), "n_empty": sum(bool(row.get("empty")) for row in rows), "metrics": metrics}


def aggregate(per_item: Sequence[Mapping[str, Any]], by: str | None = "kind", resamples: int = 1000,
              seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """Overall and per-``by`` group: ``n``, ``n_empty`` and, per metric, its aggregation with a CI.

    ``{"n", "n_empty", "metrics": {m: {"mean", "ci_low", "ci_high"}}, "by", "groups": {g: {...}},
    "bootstrap": {...}}``; items without the ``by`` field go to group ``"unknown"``; no item with
    it → no groups.
    """
    names = list(dict.fromkeys(name for row in per_item for name in row["scores"]))
    result = _summary(per_item, names, resamples, seed, confidence)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    if by and any(by in row for row in per_item):
        for row in per_item:
            groups.setdefault(str(row.get(by, "unknown")), []).append(row)
    result["by"] = by
    result["groups"] = {g: _summary(groups[g], names, resamples, seed, confidence) for g in sorted(groups)}
    result["bootstrap"] = {"resamples": resamples, "seed": seed, "confidence": confidence, "method": "percentile"}
    return result


def headline(aggregated: Mapping[str, Any]) -> dict[str, float | None]:
    """Flat ``{metric: value, "kind=K/metric": value}`` (for W&B and checkpoint selection)."""
    def flat(summary: Mapping[str, Any], prefix: str) -> dict[str, float | None]:
        out = {}
        for name, stats in summary["metrics"].items():
            out[prefix + name] = stats[_aggregation_of(name)[0]]
        return out
    out = flat(aggregated, "")
    for group, summary in aggregated.get("groups", {}).items():
        out.update(flat(summary, f"{aggregated['by']}={group}/"))
    return out


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 10000, seed: int = 0,
                     confidence: float = 0.95) -> dict[str, float]:
    """Run A vs run B on the same items: mean difference, its CI and a two-sided p-value.

    Items are resampled in pairs; ``p`` is the share of resampled differences at least as far
    from the observed one as the observed one is from 0 (the bootstrap shifted to the null),
    with the +1 correction, so identical runs give ``p = 1`` and ``p`` is never 0.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired bootstrap needs two equally long non-empty lists (got {len(a)}, {len(b)})")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    observed = float(diffs.mean())
    stats = _resampled(diffs, AGGREGATIONS["mean"], resamples, seed)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    extreme = int(np.sum(np.abs(stats - observed) >= abs(observed) - 1e-12))
    return {"diff": observed, "ci_low": float(low), "ci_high": float(high),
            "p_value": (extreme + 1) / (resamples + 1)}
