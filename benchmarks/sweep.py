"""Benchmark 3: checkpoint sweep — merge every checkpoint (seed) vs one base + adapter swap (ours).

Seed: for each LoRA checkpoint, ``swift export --adapters CKPT --merge_lora true`` (the real CLI,
a subprocess, through ``patentqa.train.merge.export_merged``), then load the merged model with
transformers and answer the dev prompts. Ours: load the base once and answer the same prompts
with each checkpoint attached by peft (``TransformersEngine.generate(..., adapter=CKPT)``).
Both write the same predictions file per checkpoint; wall time and bytes written are compared.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.common import (BENCH, REPO, TINY, Clock, Figure, Ratio, Result, dir_bytes, fmt_bytes, median,
                               scratch)
from benchmarks.pipeline import CACHE, smoke_build

SPEED_GOAL = 3.0
BYTES_GOAL = 0.01
MAX_NEW_TOKENS = 16
BATCH_SIZE = 8
RUNS = BENCH / "runs"


def train_command() -> list[str]:
    """A short real ``swift sft`` of the tiny model that saves 4 checkpoints (steps 2, 4, 6, 8)."""
    return [sys.executable, "-m", "patentqa.train", "+exp=smoke", "train.max_steps=8", "train.save_steps=2",
            "train.eval_steps=2", "logger=none", f"paths.runs_dir={RUNS}", f"paths.cache_dir={CACHE}",
            f"paths.data_dir={BENCH / 'data'}", f"model.path={TINY / 'qwen2_5_vl'}",
            f"model.embedder_path={TINY / 'qwen2_vl_gme'}"]


def ensure_checkpoints(n: int) -> list:
    """The newest bench training run's checkpoints (training one the first time)."""
    from patentqa.tracking import checkpoints

    def newest() -> list:
        runs = sorted(RUNS.glob("smoke/*/swift"), key=lambda p: p.parent.name)
        return checkpoints(runs[-1]) if runs else []

    found = newest()
    if len(found) < 4:
        log = BENCH / "train.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            subprocess.run(train_command(), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=True)
        found = newest()
    return found[:n]


def write_predictions(path: Path, prompts: list, answers: list[str]) -> None:
    lines = [json.dumps({"index": i, "prediction": a}, ensure_ascii=False) for i, a in enumerate(answers)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def seed_sweep(found: list, prompts: list, out: Path) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Merge each checkpoint with ``swift export``, load the merged model, answer."""
    from patentqa.infer.engine import Sampling
    from patentqa.infer.engines.transformers_engine import TransformersEngine, load_base
    from patentqa.train.merge import export_merged

    answers, split = {}, {"export_s": 0.0, "load_s": 0.0, "answer_s": 0.0}
    for checkpoint in found:
        merged = out / f"{checkpoint.path.name}-merged"
        with Clock() as clock:
            export_merged(checkpoint.path, merged)
        split["export_s"] += clock.seconds
        with Clock() as clock:
            model, processor = load_base(merged)
            engine = TransformersEngine(model=model, processor=processor, batch_size=BATCH_SIZE)
        split["load_s"] += clock.seconds
        with Clock() as clock:
            answers[checkpoint.path.name] = engine.generate(prompts, Sampling(max_new_tokens=MAX_NEW_TOKENS))
            write_predictions(out / "eval" / checkpoint.path.name / "predictions.jsonl", prompts,
                              answers[checkpoint.path.name])
        split["answer_s"] += clock.seconds
        engine.close()
    return answers, split


def our_sweep(found: list, prompts: list, out: Path) -> tuple[dict[str, list[str]], dict[str, float]]:
    """One base model; each checkpoint attached as a peft adapter and answered."""
    from patentqa.infer.engine import Sampling
    from patentqa.infer.engines.transformers_engine import TransformersEngine, load_base

    answers, split = {}, {"load_s": 0.0, "answer_s": 0.0}
    with Clock() as clock:
        model, processor = load_base(TINY / "qwen2_5_vl")
        engine = TransformersEngine(model=model, processor=processor, batch_size=BATCH_SIZE,
                                    max_loaded_adapters=max(4, len(found)))
    split["load_s"] += clock.seconds
    with Clock() as clock:
        for checkpoint in found:
            answers[checkpoint.path.name] = engine.generate(prompts, Sampling(max_new_tokens=MAX_NEW_TOKENS),
                                                            adapter=str(checkpoint.path))
            write_predictions(out / "eval" / checkpoint.path.name / "predictions.jsonl", prompts,
                              answers[checkpoint.path.name])
    split["answer_s"] += clock.seconds
    engine.close()
    return answers, split


def run(repeats: int, quick: bool = False) -> Result:
    """Sweep the checkpoints ``repeats`` times each way; wall time and bytes written."""
    from patentqa.train.equivalence import load_prompts

    with Clock() as setup:
        _, build = smoke_build()
        found = ensure_checkpoints(2 if quick else 4)
    prompts = load_prompts(build.out_dir / "dev_eval.jsonl", 4 if quick else 12)
    times: dict[str, list[float]] = {"seed": [], "ours": []}
    written: dict[str, list[float]] = {"seed": [], "ours": []}
    splits: dict[str, dict[str, list[float]]] = {"seed": {}, "ours": {}}
    agree = total = 0
    for _ in range(repeats):
        outcome = {}
        for name, sweep in (("seed", seed_sweep), ("ours", our_sweep)):
            with scratch(f"sweep-{name}") as out:
                with Clock() as clock:
                    outcome[name], split = sweep(found, prompts, out)
                times[name].append(clock.seconds)
                written[name].append(dir_bytes(out))
                for key, value in split.items():
                    splits[name].setdefault(key, []).append(value)
        for checkpoint, answers in outcome["seed"].items():
            agree += sum(a == b for a, b in zip(answers, outcome["ours"][checkpoint]))
            total += len(answers)
    return _result(times, written, splits, agree, total, found, prompts, setup.seconds)


def _result(times: dict, written: dict, splits: dict, agree: int, total: int, found: list, prompts: list,
            setup_s: float) -> Result:
    result = Result("sweep", "Checkpoint sweep (score every checkpoint)")
    steps = ", ".join(str(c.step) for c in found)
    result.setup = [
        f"input: {len(found)} LoRA checkpoints (steps {steps}) of a short real `swift sft` of the tiny model "
        f"(cached under .cache/bench/runs; {setup_s:.1f} s to find or train), {len(prompts)} dev prompts of the smoke set",
        "seed: per checkpoint `swift export --adapters CKPT --merge_lora true` (CLI subprocess), load the merged "
        f"model with transformers, answer (batch {BATCH_SIZE}, {MAX_NEW_TOKENS} new tokens), write predictions",
        f"ours: load the base once; per checkpoint attach the adapter with peft and answer (same batch and tokens), "
        "write predictions",
        "bytes: everything each way writes (seed: merged model dirs + predictions; ours: predictions)",
    ]
    result.figures.append(Figure("seed: wall time", "s", times["seed"]))
    result.figures.append(Figure("ours: wall time", "s", times["ours"]))
    for name in ("seed", "ours"):
        for key, values in splits[name].items():
            result.figures.append(Figure(f"{name}: {key[:-2]} (sum over checkpoints)", "s", values))
    n = len(found)
    overhead = {name: [(t - a) / n for t, a in zip(times[name], splits[name]["answer_s"])] for name in times}
    result.figures.append(Figure("seed: per-checkpoint overhead (wall - answering) / checkpoints", "s", overhead["seed"]))
    result.figures.append(Figure("ours: per-checkpoint overhead (wall - answering) / checkpoints", "s", overhead["ours"]))
    result.figures.append(Figure("seed: bytes written", "B", written["seed"]))
    result.figures.append(Figure("ours: bytes written", "B", written["ours"]))
    result.ratios.append(Ratio("sweep wall time, ours vs seed", [s / o for s, o in zip(times["seed"], times["ours"])],
                               SPEED_GOAL, "speedup", f"{median(times['seed']):.1f} s", f"{median(times['ours']):.1f} s"))
    result.ratios.append(Ratio("bytes written, ours / seed", [o / s for s, o in zip(written["seed"], written["ours"])],
                               BYTES_GOAL, "fraction", fmt_bytes(median(written["seed"])),
                               fmt_bytes(median(written["ours"]))))
    result.ratios.append(Ratio("per-checkpoint overhead besides answering, ours vs seed",
                               [s / max(o, 1e-3) for s, o in zip(overhead["seed"], overhead["ours"])], None, "info",
                               f"{median(overhead['seed']):.2f} s", f"{median(overhead['ours']):.2f} s"))
    result.findings.append(
        f"the wall-time ratio depends on how many prompts each checkpoint answers ({len(prompts)} here, the whole "
        "smoke dev split; answering costs the same both ways, ours slightly more as unmerged LoRA adds matmuls); "
        "the overhead per checkpoint is the part that carries over to the 32B model, where a merge writes and "
        "reloads ~65 GB instead of ~80 MB")
    result.findings.append(
        f"same answers: {agree}/{total} greedy answers of base+adapter equal the merged model's "
        "(the merge is exact in fp32; a mismatch would be the merged-vs-adapter drift of ms-swift#5430)")
    per_merge = median(splits["seed"]["export_s"]) / len(found)
    result.findings.append(
        f"where the seed's time goes: `swift export` {per_merge:.1f} s per checkpoint (process start, imports, "
        "loading base and adapter, merging, writing safetensors) and a fresh model load per checkpoint; ours pays "
        "one base load and ~0.1 s per adapter attach. For the 32B model each merge writes ~65 GB (bf16) and each "
        "load reads it back, so the gap widens; a rank-8 adapter on all linear layers of a 32B model is ~0.13 GB in bf16")
    return result
