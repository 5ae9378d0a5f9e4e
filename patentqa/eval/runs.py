"""Reading evaluated runs: what the sweep left in each run dir, and the config keys that tell runs apart.

A run dir holds ``manifest.json``, ``config.yaml``, ``eval/sweep.json`` and
``eval/{dev,test}/{checkpoint-N,base}/{predictions,scores}.jsonl`` + ``metrics.json``. Nothing here
runs a model or scores anew.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from patentqa.eval.score import read_items
from patentqa.tracking import read_jsonl, swift_log

BASE = "base"            # the sweep's name for the untuned model (eval.include_base)
NO_TEST = "dev — no test split"
# Config keys that never make two runs differ in a way worth listing.
IGNORED_CONFIG = ("paths.", "name", "tags", "hydra.", "logger.", "dry_run", "resume", "checkpoint", "split",
                  "out_dir", "strict", "launcher.", "infer.batch_size", "infer.device", "retrieval.device",
                  "retrieval.batch_size", "pipeline.chunk_size",
                  "device", "model.device", "model.hub", "retrieval.hub")  # where weights come from / run: same model


@dataclass
class Scored:
    """One checkpoint (or the base model) of a run answered and scored on one split."""

    split: str
    checkpoint: str
    rows: dict[str, dict[str, Any]]          # id → scores.jsonl row
    records: dict[str, dict[str, Any]]       # id → predictions.jsonl record (question, raw_answer...)
    aggregate: dict[str, Any]                # metrics.json "aggregate"

    @property
    def label(self) -> str:
        return self.split if self.split == "test" else NO_TEST


@dataclass
class Run:
    path: Path
    label: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    sweep: dict[str, Any]
    main: Scored                             # best checkpoint on test, else on dev
    dev: Scored                              # best checkpoint on dev
    base: Scored | None = None               # base model on the main split
    source_config: dict[str, Any] | None = None  # as composed, interpolations unresolved (Hydra's .hydra/config.yaml)

    @property
    def design_config(self) -> dict[str, Any]:
        """The config runs are told apart by: unresolved where Hydra kept it, so a value derived from
        a study axis (``data.synth.seed: ${seed}``, a data dir named after it) does not count as a
        difference of its own."""
        return self.source_config if self.source_config is not None else self.config


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path)


def _key(row: dict[str, Any]) -> str:
    return str(row["id"]) if row.get("id") is not None else f"line:{row.get('line')}"


def load_scored(run_dir: Path, split: str, name: str) -> Scored | None:
    """``eval/SPLIT/NAME`` of a run; None when it was not evaluated or holds no item."""
    folder = run_dir / "eval" / split / name
    if not (folder / "scores.jsonl").is_file():
        return None
    rows = _read_jsonl(folder / "scores.jsonl")
    if not rows:
        return None
    records = {}
    if (folder / "predictions.jsonl").is_file():
        records = {_key(r): r for r in read_items(folder / "predictions.jsonl")[0]}
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return Scored(split, name, {_key(r): r for r in rows}, records, metrics["aggregate"])


def _require(scored: Scored | None, run_dir: Path, split: str, name: str) -> Scored:
    if scored is None:
        raise FileNotFoundError(f"{run_dir}/eval/{split}/{name}/scores.jsonl is missing or empty although "
                                f"eval/sweep.json lists it; re-run `python -m patentqa.eval run_dir={run_dir}`")
    return scored


def load_run(run_dir: Path) -> Run:
    """A run's records and its best checkpoint's scores (test when there is a test split)."""
    sweep_path = run_dir / "eval" / "sweep.json"
    if not sweep_path.is_file():
        raise FileNotFoundError(f"{sweep_path} not found: run `python -m patentqa.eval run_dir={run_dir}` first")
    sweep = json.loads(sweep_path.read_text(encoding="utf-8"))
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")) \
        if (run_dir / "manifest.json").is_file() else {}
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False) \
        if (run_dir / "config.yaml").is_file() else dict(manifest.get("config") or {})
    best = sweep["best"]["name"]
    dev = _require(load_scored(run_dir, "dev", best), run_dir, "dev", best)
    main, base = dev, None
    if sweep["best"].get("test") is not None:
        main = _require(load_scored(run_dir, "test", best), run_dir, "test", best)
    if sweep.get("base"):
        base = load_scored(run_dir, main.split, BASE)
    label = str(sweep.get("name") or manifest.get("name") or config.get("name") or run_dir.name)
    if sweep["best"].get("baseline"):  # a baseline-only run: name the row after the baseline
        label = str((sweep.get("baselines") or {}).get(best, {}).get("label") or best)
    source = run_dir / ".hydra" / "config.yaml"
    source_config = OmegaConf.to_container(OmegaConf.load(source), resolve=False) if source.is_file() else None
    return Run(run_dir, label, manifest, config, sweep, main, dev, base, source_config)


def unique_labels(runs: list[Run]) -> None:
    """Same experiment name twice: add what tells the runs apart, the config groups they chose differently
    (``model=tiny_qwen3_vl``, ``variant=grpo``: a multirun over a group), else the run dir's name, else a number."""
    for label in [label for label, n in Counter(run.label for run in runs).items() if n > 1]:
        same = [run for run in runs if run.label == label]
        choices = [{k.removesuffix(".name"): v for k, v in flatten(run.design_config).items()
                    if k == "variant" or (k.endswith(".name") and k.count(".") == 1)} for run in same]
        differ = [k for k in sorted(set().union(*choices)) if len({c.get(k) for c in choices}) > 1]
        for run, chose in zip(same, choices):
            run.label += "".join(f" {k}={chose.get(k)}" for k in differ)
    for suffix in (lambda i, run: f"/{run.path.name}", lambda i, run: f"#{i + 1}"):
        counts = Counter(run.label for run in runs)
        for i, run in enumerate(runs):
            if counts[run.label] > 1:
                run.label += suffix(i, run)


# ---------------------------------------------------------------- configs

def get(tree: Any, dotted: str, default: Any = None) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; ``default`` where a part is missing."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"a.b": "value"}`` (lists and dicts as JSON)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(tree, ensure_ascii=False) if isinstance(tree, (list, dict)) else str(tree)}


def differing_keys(configs: list[dict[str, Any]], ignored: tuple[str, ...] = IGNORED_CONFIG
                   ) -> tuple[list[dict[str, str]], list[str]]:
    """The flattened configs and the keys whose values differ between them, ``ignored`` left out
    (a name ending in ``.`` leaves out the whole group)."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f
                   if not any(k == p or (p.endswith(".") and k.startswith(p)) for p in ignored)})
    return flat, [k for k in keys if len({f.get(k, "–") for f in flat}) > 1]


def stat(aggregate: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """A metric's {mean, ci_low, ci_high} in a ``metrics.json`` aggregate; None when it has no mean."""
    stats = aggregate.get("metrics", {}).get(metric)
    return stats if stats and stats.get("mean") is not None else None


def grpo_log(run: Run) -> list[dict[str, Any]]:
    """A GRPO run's per-step records (reward, kl, completion length) from swift's logging.jsonl; [] otherwise."""
    return [{**record, "step": int(str(record["global_step/max_steps"]).split("/")[0])}
            for record in swift_log(run.path / "swift") if "reward" in record and "global_step/max_steps" in record]
