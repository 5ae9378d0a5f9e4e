"""Checkpoint sweep: every checkpoint of a run answered and scored on dev, the best one once on test.

One base model is loaded and LoRA adapters are swapped on it (no merging); a full fine-tuning
checkpoint is a whole model and is loaded as the model, once, with the same engine kind, after
the engine before it is closed (one model alive at a time). Results
are cached per (checkpoint content hash, evaluation config hash), so a second call evaluates only
new checkpoints and loads no model for cached ones. Every number names its split:
``eval/{dev,test}/{checkpoint-N,base}/``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from patentqa.cli import InputError
from patentqa.data.build import DatasetBuild, build_dataset
from patentqa.data.corpus import DataError, Question
from patentqa.eval.aggregate import headline
from patentqa.eval.metrics import configure_bertscore
from patentqa.eval.browse import shown_pages
from patentqa.eval.runs import BASE
from patentqa.eval.score import score_file
from patentqa.eval.thumbnails import thumbnails
from patentqa.infer.engine import Engine
from patentqa.infer.engines import full_checkpoint_model, make_engine
from patentqa.infer.pipeline import PipelineSettings, answer_questions
from patentqa.infer.run import answer_context
from patentqa.tracking import Checkpoint, Tracker, checkpoints, read_jsonl, write_json_atomic



def eval_key(cfg: DictConfig, build: DatasetBuild) -> str:
    """Hash of everything besides the checkpoint that changes predictions or scores."""
    parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("prompt", "retrieval", "pipeline", "eval")}
    parts["infer"] = {k: v for k, v in OmegaConf.to_container(cfg.infer, resolve=True).items()
                      if k not in ("batch_size", "device", "concurrency", "max_loaded_adapters", "tensor_parallel_size",
                                   "cpu_kvcache_gib", "gpu_memory_utilization")}
    parts["dataset"], parts["model"] = build.manifest["dataset_key"], str(cfg.model.path)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_hash(checkpoint: Checkpoint | None) -> str:
    """Content hash of an adapter or a full checkpoint's weights (``base`` for the untuned model)."""
    if checkpoint is None:
        return BASE
    patterns = ("config.json", "model*.safetensors") if checkpoint.full else ("adapter_*",)
    digest = hashlib.sha256()
    for path in sorted({p for pattern in patterns for p in checkpoint.path.glob(pattern)}):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


class Engines:
    """One engine alive at a time, made on first need: the base model's (LoRA adapters swapped on it,
    sized for ``adapters``) or a full checkpoint's (loaded from its dir). Switching closes the engine
    it holds before loading the next (patentqa/residency.py), so a ``train=full`` sweep never holds
    the base model and a checkpoint at once."""

    def __init__(self, cfg: DictConfig, adapters: list[str] | None = None) -> None:
        self.cfg, self.adapters = cfg, list(adapters or [])
        self.engine: Engine | None = None
        self.model: Path | None = None  # the full checkpoint the engine holds; None: the base model
        self.loads = self.full_loads = 0

    def for_checkpoint(self, checkpoint: Checkpoint | None) -> tuple[Engine, str | None]:
        """(engine, adapter dir or None) that answers as ``checkpoint``."""
        full = checkpoint.path if checkpoint is not None and checkpoint.full else None
        if self.engine is None or full != self.model:
            self.close()
            model = self.cfg.model if full is None else full_checkpoint_model(self.cfg.model, full)
            self.engine = make_engine(self.cfg.infer, model, self.adapters if full is None else [])
            self.model, self.loads, self.full_loads = full, self.loads + 1, self.full_loads + (full is not None)
        return self.engine, str(checkpoint.path) if checkpoint is not None and full is None else None

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        self.engine, self.model = None, None

    def __enter__(self) -> Engines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def evaluate(cfg: DictConfig, build: DatasetBuild, engines: Engines, questions: list[Question], split: str,
             name: str, checkpoint: Checkpoint | None, out_root: Path, key: str) -> dict[str, Any]:
    """Answer and score one checkpoint on one split, unless a result with the same key is there."""
    out = out_root / split / name
    cache_key = f"{checkpoint_hash(checkpoint)}-{key}"
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        cached = json.loads(metrics_path.read_text(encoding="utf-8"))
        if cached.get("cache_key") == cache_key:
            return cached | {"cached": True}
    if (out / "key").is_file() and (out / "key").read_text() != cache_key:
        shutil.rmtree(out)  # predictions of another checkpoint content or config: start over
    out.mkdir(parents=True, exist_ok=True)
    (out / "key").write_text(cache_key)
    engine, adapter = engines.for_checkpoint(checkpoint)
    summary = answer_questions(questions, answer_context(cfg, build, questions), engine,
                               PipelineSettings.from_cfg(cfg.pipeline, cfg.infer, cfg.model), out / "predictions.jsonl",
                               adapter=adapter)
    record = score_file(out / "predictions.jsonl", list(cfg.eval.metrics), cfg.eval.composite, cfg.eval.by,
                        cfg.eval.bootstrap.resamples, cfg.eval.bootstrap.seed, cfg.eval.bootstrap.confidence,
                        scores_path=out / "scores.jsonl", metrics_path=metrics_path)
    record.update(split=split, checkpoint=name, step=checkpoint.step if checkpoint else 0,
                  path=str(checkpoint.path) if checkpoint else None, cache_key=cache_key,
                  headline=headline(record["aggregate"]), answering=summary)
    write_json_atomic(metrics_path, record)
    return record | {"cached": False}


def _log(tracker: Tracker | None, record: dict[str, Any], pages: Mapping[tuple[str, int], Path] | None = None,
         cache_dir: Path | None = None) -> None:
    """Metrics against the global step, one W&B table per checkpoint (``table_rows``: with the asked page's
    thumbnail from the page cache ``pages`` under ``cache_dir``), predictions as an artifact."""
    if tracker is None or not tracker.enabled or record.get("cached"):
        return
    split, name = record["split"], record["checkpoint"]
    metrics = {f"{split}/{k}": v for k, v in record["headline"].items() if v is not None}
    tracker.log(metrics, step=record["step"])
    tracker.log_table(f"{split}_predictions/{name}", TABLE_COLUMNS,
                      table_rows(read_jsonl(record["scores_file"]), read_jsonl(record["predictions"]), pages or {},
                                 cache_dir), images=["asked page"])
    tracker.log_artifact(record["predictions"], name=f"predictions-{split}-{name}", type="predictions")


TABLE_COLUMNS = ["id", "question", "kind", "document", "asked page", "retrieved pages", "gold", "prediction",
                 "char_f1", "composite"]


def table_rows(scores: list[dict[str, Any]], predictions: list[dict[str, Any]],
               pages: Mapping[tuple[str, int], Path], cache_dir: Path | None) -> list[list[Any]]:
    """One checkpoint's W&B predictions table (``TABLE_COLUMNS``): each answer with its question, the asked page's
    thumbnail file (made once, ``patentqa.eval.thumbnails``; None for a whole-patent question or without the
    page cache) and the retrieved pages its prompt showed."""
    records = {r["id"]: r for r in predictions}
    shown = {key: shown_pages(record) for key, record in records.items()}
    asked = {key: pages.get((records[key]["document"], page)) for key, (page, _) in shown.items() if page is not None}
    thumbs = thumbnails([p for p in asked.values() if p], cache_dir, progress=False).paths if cache_dir else {}
    rows = []
    for row in scores:
        key, record = row.get("id"), records.get(row.get("id"), {})
        retrieved = shown.get(key, (None, []))[1]
        rows.append([key, record.get("question"), row.get("kind"), record.get("document"), thumbs.get(asked.get(key)),
                     ", ".join(map(str, retrieved)), row["answer"], row["prediction"], row["scores"].get("char_f1"),
                     row["scores"].get("composite")])
    return rows


def evaluate_baseline(cfg: DictConfig, build: DatasetBuild, questions: list[Question], split: str, name: str,
                      out_root: Path) -> dict[str, Any]:
    """Answer ``questions`` with a model-free baseline (cheap: always anew) and score them."""
    from patentqa.eval.baselines import BASELINES
    from patentqa.infer.pipeline import append_records

    if name not in BASELINES:
        raise ValueError(f"unknown eval.baselines entry {name!r} (expected one of {sorted(BASELINES)})")
    if build.layout is None:
        raise ValueError(f"baseline {name} needs the OCR layer: set data.ocr.enabled to auto or true")
    label, answer = BASELINES[name]
    out = out_root / split / name
    shutil.rmtree(out, ignore_errors=True)
    append_records(out / "predictions.jsonl", answer(questions, build.documents, build.layout))
    record = score_file(out / "predictions.jsonl", list(cfg.eval.metrics), cfg.eval.composite, cfg.eval.by,
                        cfg.eval.bootstrap.resamples, cfg.eval.bootstrap.seed, cfg.eval.bootstrap.confidence,
                        scores_path=out / "scores.jsonl", metrics_path=out / "metrics.json")
    record.update(split=split, checkpoint=name, label=label, step=0, path=None, headline=headline(record["aggregate"]))
    write_json_atomic(out / "metrics.json", record)
    return record | {"cached": False}


@dataclass(frozen=True)
class SweepInputs:
    """What a sweep evaluates, checked before anything is written: the run's complete checkpoints and its data."""

    found: list[Checkpoint]
    build: DatasetBuild


def sweep_inputs(cfg: DictConfig, run_dir: Path) -> SweepInputs:
    """The run's checkpoints and dataset; ``InputError`` when there is nothing to evaluate, ``DataError``
    when the dev split is empty (nothing to choose a checkpoint on)."""
    found = checkpoints(run_dir / "swift")
    if not found and not cfg.eval.include_base and not cfg.eval.get("baselines"):
        raise InputError(f"{run_dir / 'swift'}: no complete checkpoint (checkpoint-N with trainer_state.json), "
                         "and eval.include_base=false, no eval.baselines: nothing to evaluate")
    build = build_dataset(cfg)
    if not build.questions["dev"]:
        raise DataError(f"{build.out_dir}: the dev split is empty: raise data.split.dev or use more documents")
    return SweepInputs(found, build)


def sweep(cfg: DictConfig, run_dir: Path, tracker: Tracker | None = None,
          inputs: SweepInputs | None = None) -> dict[str, Any]:
    """Evaluate every checkpoint of ``run_dir`` (and ``eval.baselines``) on dev; score the best on
    test; write eval/sweep.json. A run with only baselines reports the best baseline as its best."""
    if cfg.eval.bertscore.model_path:
        configure_bertscore(cfg.eval.bertscore.model_path, cfg.eval.bertscore.num_layers,
                            cfg.eval.bertscore.batch_size, cfg.eval.bertscore.device)
    inputs = inputs or sweep_inputs(cfg, run_dir)
    build, found = inputs.build, inputs.found
    baselines = list(cfg.eval.get("baselines") or [])
    dev, test = build.questions["dev"], build.questions["test"]
    key, out_root = eval_key(cfg, build), run_dir / "eval"
    select = cfg.eval.select_by
    page_cache = (build.pages.paths, Path(cfg.paths.cache_dir))  # the W&B tables' page thumbnails come from it
    targets: list[tuple[str, Checkpoint | None]] = [(c.path.name, c) for c in found]
    if cfg.eval.include_base:
        targets.insert(0, (BASE, None))
    results: dict[str, dict[str, Any]] = {}
    on_test: dict[str, dict[str, Any]] = {}
    for name in baselines:
        results[name] = evaluate_baseline(cfg, build, dev, "dev", name, out_root)
        if test:
            on_test[name] = evaluate_baseline(cfg, build, test, "test", name, out_root)
        _log(tracker, results[name], *page_cache)
        print(f"dev  {name:>16}: {select} = {results[name]['headline'].get(select):.4f} (baseline)")
    best_name = None
    if targets:
        with Engines(cfg, [str(c.path) for _, c in targets if c is not None and not c.full]) as engines:
            for name, checkpoint in targets:
                results[name] = evaluate(cfg, build, engines, dev, "dev", name, checkpoint, out_root, key)
                _log(tracker, results[name], *page_cache)
                print(f"dev  {name:>16}: {select} = {results[name]['headline'].get(select):.4f}"
                      + (" (cached)" if results[name]["cached"] else ""))
            candidates = [n for n, _ in targets if n != BASE] or [BASE]  # no checkpoints: the base model is all there is
            best_name = max(candidates, key=lambda n: results[n]["headline"].get(select) or 0.0)
            for name, checkpoint in dict([(best_name, dict(targets)[best_name])]
                                         + ([(BASE, None)] if cfg.eval.include_base else [])).items():
                if test:
                    on_test[name] = evaluate(cfg, build, engines, test, "test", name, checkpoint, out_root, key)
                    _log(tracker, on_test[name], *page_cache)
    else:  # baselines only
        best_name = max(baselines, key=lambda n: results[n]["headline"].get(select) or 0.0)
    best = dict(targets).get(best_name)
    report = {
        "run_dir": str(run_dir), "name": cfg.name, "select_by": select, "eval_key": key,
        "dev_split_size": len(dev), "test_split_size": len(test),
        "checkpoints": [{"name": n, "step": c.step, "path": str(c.path), "dev": results[n]["headline"]}
                        for n, c in targets if c is not None],
        "base": {"dev": results[BASE]["headline"], "test": on_test[BASE]["headline"] if BASE in on_test else None}
        if cfg.eval.include_base else None,
        "baselines": {n: {"label": results[n]["label"], "dev": results[n]["headline"],
                          "test": on_test[n]["headline"] if n in on_test else None} for n in baselines},
        "best": {"name": best_name, "step": best.step if best else 0, "path": str(best.path) if best else None,
                 "baseline": best_name in baselines,
                 "dev": results[best_name]["headline"],
                 "test": on_test[best_name]["headline"] if best_name in on_test else None},
        "full_checkpoints": sum(c is not None and c.full for _, c in targets),
    }
    write_json_atomic(out_root / "sweep.json", report)
    if tracker is not None:
        tracker.summary({"best/checkpoint": best_name, "best/step": report["best"]["step"],
                         **{f"best/dev/{k}": v for k, v in report["best"]["dev"].items()},
                         **{f"best/test/{k}": v for k, v in (report["best"]["test"] or {}).items()}})
    test_line = (f"{select} on test = {report['best']['test'].get(select):.4f}" if report["best"]["test"]
                 else "test split is empty: no test score")
    print(f"best on dev: {best_name} (step {report['best']['step']}); {test_line}")
    return report
