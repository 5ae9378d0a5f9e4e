"""Score a predictions file; re-scoring never re-runs a model.

    python -m patentqa.eval.score predictions=FILE [metrics=[char_f1,exact_match]] [by=kind]
                                  [composite=agcut] [resamples=1000] [seed=0] [bertscore_model_path=DIR]

``FILE`` is JSONL; each line carries ``prediction`` and ``answer`` (strings) and optionally
``id`` and ``kind``. A bad line (not JSON, no ``prediction``, no ``answer``, not strings) is
reported as ``FILE:LINE: reason`` and skipped and counted; an empty-string prediction is valid
and scores 0. Unset arguments come from ``conf/eval/default.yaml``, so this scores like the
checkpoint sweep. Writes, atomically, beside ``FILE`` (``X.jsonl`` → ``X.scores.jsonl`` and
``X.metrics.json``) and prints metric × overall/per-group with n and CIs.
Exit status: 0 when at least one line was scored (even with bad lines), 1 when none could be
(missing or empty file, every line bad), 2 on a bad argument.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from patentqa.cli import parse_args
from patentqa.config import CONF_DIR
from patentqa.eval.aggregate import aggregate
from patentqa.eval.metrics import (COMPOSITE, MetricUnavailable, configure_bertscore, metrics_for, resolve_weights,
                                   score_items)
from patentqa.tracking import atomic_write, package_versions, write_json_atomic

KEEP = ("id", "kind", "round")  # fields copied from a prediction line into its scores line


@dataclass
class ScoreArgs:
    predictions: str = MISSING
    metrics: Optional[list[str]] = None       # default: eval.metrics
    composite: Any = None                     # preset name or {metric: weight}; default: eval.composite
    by: Optional[str] = None                  # per-group key; default: eval.by ("none": overall only)
    resamples: Optional[int] = None           # bootstrap resamples; default: eval.bootstrap.resamples
    seed: Optional[int] = None                # bootstrap seed; default: eval.bootstrap.seed
    bertscore_model_path: Optional[str] = None  # local model dir; default: eval.bertscore.model_path
    strict: bool = False                      # true: stop at the first bad line


def eval_defaults() -> dict[str, Any]:
    """``conf/eval/default.yaml`` as a plain dict (the sweep's settings)."""
    conf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "eval" / "default.yaml"), resolve=True)
    return dict(conf)  # type: ignore[arg-type]


def read_items(path: str | Path, strict: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Scoreable records (with their ``line``) and bad lines ``{"line", "reason"}``; blank lines are skipped."""
    items, bad = [], []
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, 1):
            if not text.strip():
                continue
            reason = None
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                reason = f"not JSON ({error.msg})"
            else:
                if not isinstance(record, dict):
                    reason = "not a JSON object"
                elif "prediction" not in record:
                    reason = "no 'prediction' field"
                elif not isinstance(record["prediction"], str):
                    reason = f"'prediction' is {type(record['prediction']).__name__}, not a string"
                elif not isinstance(record.get("answer"), str) or not record["answer"].strip():
                    reason = "no gold 'answer' (missing, empty or not a string)"
            if reason is not None:
                if strict:
                    raise ValueError(f"{path}:{number}: {reason}")
                bad.append({"line": number, "reason": reason})
            else:
                items.append({**record, "line": number})
    return items, bad


def output_paths(predictions: str | Path) -> tuple[Path, Path]:
    """``X.jsonl`` → ``X.scores.jsonl``, ``X.metrics.json`` (other names: the full name + suffix)."""
    path = Path(predictions)
    stem = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.name
    return path.with_name(stem + ".scores.jsonl"), path.with_name(stem + ".metrics.json")


def score_file(path: str | Path, metrics: Sequence[str] | None = None,
               weights: str | Mapping[str, float] | None = None, by: str | None = "kind", resamples: int = 1000,
               seed: int = 0, confidence: float = 0.95, strict: bool = False,
               scores_path: str | Path | None = None, metrics_path: str | Path | None = None) -> dict[str, Any]:
    """Score ``path``; write per-item scores and the aggregate beside it; return the metrics record.

    ``metrics``/``weights`` None: ``eval.metrics``/``eval.composite`` of ``conf/eval/default.yaml``.
    """
    if metrics is None or weights is None:
        conf = eval_defaults()
        metrics = conf["metrics"] if metrics is None else metrics
        weights = conf["composite"] if weights is None else weights
    resolved = resolve_weights(weights)
    items, bad = read_items(path, strict)
    per_item = score_items(items, list(metrics), resolved, keep=("line", *KEEP, *([by] if by else [])))
    metric_names = metrics_for(items, metrics)  # what the record lists: accuracy too when round A is in the file
    for row, item in zip(per_item, items):
        row["prediction"], row["answer"] = item["prediction"], item["answer"]
    default_scores, default_metrics = output_paths(path)
    scores_out = Path(scores_path or default_scores)
    metrics_out = Path(metrics_path or default_metrics)
    atomic_write(scores_out, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                                     for r in per_item).encode("utf-8"))
    record = {"predictions": str(path), "scores_file": str(scores_out), "metrics": metric_names,
              "composite_weights": resolved, "n_bad": len(bad), "bad_lines": bad,
              "aggregate": aggregate(per_item, by, resamples, seed, confidence),
              "versions": package_versions(("patentqa", "rouge-score", "jieba", "numpy", "bert-score"))}
    write_json_atomic(metrics_out, record)
    record["metrics_file"] = str(metrics_out)
    return record


def _cell(stats: Mapping[str, Any]) -> str:
    value = next(iter(stats.values()))
    if value is None:
        return "-"
    return f"{value:.4f} [{stats['ci_low']:.3f},{stats['ci_high']:.3f}]"


def format_table(record: Mapping[str, Any]) -> str:
    """Metric × (overall, each group) with n, n_empty and the bootstrap CI in brackets."""
    agg = record["aggregate"]
    columns = [("overall", agg)] + [(f"{agg['by']}={g}", s) for g, s in agg["groups"].items()]
    names = list(agg["metrics"])
    header = ["metric", *(c for c, _ in columns)]
    body = [["n", *(str(s["n"]) for _, s in columns)], ["n_empty", *(str(s["n_empty"]) for _, s in columns)]]
    body += [[name, *(_cell(s["metrics"][name]) for _, s in columns)] for name in names]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *body]]
    boot = agg["bootstrap"]
    lines.append(f"{COMPOSITE} = {record['composite_weights']}; CI: {boot['confidence']:.0%} percentile bootstrap, "
                 f"{boot['resamples']} resamples, seed {boot['seed']}; bad lines: {record['n_bad']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(ScoreArgs, argv)
    conf = eval_defaults()
    by = conf.get("by") if args.by is None else args.by
    by = None if by in (None, "", "none", "null") else by
    bertscore = dict(conf.get("bertscore") or {})
    if args.bertscore_model_path is not None:
        bertscore["model_path"] = args.bertscore_model_path
    try:
        configure_bertscore(**bertscore)
        record = score_file(args.predictions, args.metrics if args.metrics is not None else conf["metrics"],
                            args.composite if args.composite is not None else conf.get("composite"), by,
                            args.resamples if args.resamples is not None else conf["bootstrap"]["resamples"],
                            args.seed if args.seed is not None else conf["bootstrap"]["seed"],
                            conf["bootstrap"].get("confidence", 0.95), args.strict)
    except (OSError, ValueError, MetricUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for bad in record["bad_lines"]:
        print(f"{args.predictions}:{bad['line']}: {bad['reason']}", file=sys.stderr)
    print(format_table(record))
    print(f"wrote {record['scores_file']} and {record['metrics_file']}")
    if record["aggregate"]["n"] == 0:
        print(f"error: nothing could be scored in {args.predictions}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
