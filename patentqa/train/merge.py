"""Merge a LoRA checkpoint with the real ``swift export`` and prove the merge changed nothing.

``python -m patentqa.train.merge checkpoint=DIR [prompts=FILE] [k=8] [max_new_tokens=16] [atol=...]``
(``merged=DIR`` checks an existing merged dir instead of exporting; see ``MergeArgs``).

1. ``swift export --adapters CKPT --merge_lora true`` (a subprocess, output streamed) writes
   ``CKPT-merged/``. It writes into a fresh partial dir that then replaces the old merge, because
   swift with ``--exist_ok true`` *skips saving* when its output dir already exists, so a re-run
   into the same dir would silently keep a stale (or half-written) merge.
2. The merged dir must carry config, weights, tokenizer, processor and chat template files.
3. Equivalence (``patentqa.train.equivalence``): base + adapter (peft) and the merged model, one
   after the other, give the same greedy tokens on K held-out prompts and first-step logits within
   tolerance; the adapter's own effect is reported.
4. ``CKPT-merged/merge_report.json`` (atomic write). A mismatch exits 1 and names the prompts
   that differ and the first differing position; a failed or incomplete merge exits 2.

Merged Qwen2.5-VL checkpoints have scored differently from their adapters across library
versions (ms-swift#5430, #5621); this check is why the sweep may trust a merged checkpoint.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from patentqa import preemption, residency
from patentqa.tracking import write_json_atomic
# MergeError lives beside the check (loading its prompts raises it too) and is this module's error as well
from patentqa.train.equivalence import (Equivalence, MergeError, check_equivalence, load_prompts,
                                        synthetic_prompts)

REPORT_NAME = "merge_report.json"


@dataclass
class MergeReport:
    """What ``merge_checkpoint`` did and found; written as ``merge_report.json``."""

    checkpoint: str
    merged_dir: str
    base_model: str
    swift_argv: list[str]
    prompts_source: str
    equivalent: bool
    verdict: str
    problems: list[str]
    equivalence: Equivalence
    timings: dict[str, float]
    versions: dict[str, str]

    def failure_message(self) -> str:
        lines = [f"MERGE CHECK FAILED: {self.merged_dir} is NOT equivalent to {self.checkpoint} on "
                 f"{self.equivalence.k} prompts", *[f"  - {p}" for p in self.problems],
                 f"  report: {Path(self.merged_dir) / REPORT_NAME}"]
        return "\n".join(lines)


# --- 1. swift export ---------------------------------------------------------------------------

def swift_command() -> list[str]:
    """The ``swift`` console script of this interpreter's environment (else the one on PATH)."""
    exe = Path(sys.executable).with_name("swift")
    found = str(exe) if exe.exists() else shutil.which("swift")
    if found is None:
        raise MergeError("the `swift` command (ms-swift) is not installed in this environment")
    return [found]


def export_env() -> dict[str, str]:
    """The environment of the export: offline hubs unless the caller set them, no torchrun."""
    env = dict(os.environ)
    for key in ("HF_HUB_OFFLINE", "MODELSCOPE_OFFLINE"):
        env.setdefault(key, "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    for key in ("NPROC_PER_NODE", "NNODES"):
        env.pop(key, None)
    return env


def export_argv(checkpoint: Path, output_dir: Path) -> list[str]:
    """``swift export`` arguments merging ``checkpoint`` into ``output_dir``."""
    return swift_command() + ["export", "--adapters", str(checkpoint), "--merge_lora", "true",
                              "--output_dir", str(output_dir), "--exist_ok", "true"]


def run_streamed(argv: list[str], env: dict[str, str], log: Path, tail_lines: int = 60) -> None:
    """Run ``argv`` (no shell), echo its output live, keep it in ``log``; raise MergeError on failure. A preemption
    signal or an exception ends the child at once (``preemption.guard``)."""
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with open(log, "w", encoding="utf-8") as out, \
            subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             errors="replace", bufsize=1) as proc, preemption.guard(proc):
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
            tail.append(line)
        code = proc.wait()
    if code != 0:
        raise MergeError(f"{' '.join(argv[:2])} exited {code}; full log {log}\n{''.join(tail)}")


def export_merged(checkpoint: Path, merged_dir: Path) -> list[str]:
    """Merge ``checkpoint`` with ``swift export`` into ``merged_dir``, replacing an old merge only on success."""
    partial = merged_dir.with_name(f".{merged_dir.name}.partial-{os.getpid()}")
    log = merged_dir.with_name(f".{merged_dir.name}.export-{os.getpid()}.log")
    shutil.rmtree(partial, ignore_errors=True)  # must not exist: swift skips saving into an existing dir
    argv = export_argv(checkpoint, partial)
    print(f"[merge] {' '.join(argv)}", flush=True)
    try:
        with residency.holding("swift export", str(checkpoint)):  # swift loads base + adapter in its process
            run_streamed(argv, export_env(), log)
        if not (partial / "config.json").is_file():
            raise MergeError(f"swift export finished but wrote no config.json into {partial}; log {log}")
        shutil.move(str(log), partial / "export.log")
        old = merged_dir.with_name(f".{merged_dir.name}.old-{os.getpid()}")
        if merged_dir.exists():
            os.replace(merged_dir, old)
        os.replace(partial, merged_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return argv


# --- 2. what a merged dir must carry --------------------------------------------------------------

def missing_files(merged_dir: Path) -> list[str]:
    """What a servable merged dir lacks: config, weights, tokenizer, processor, chat template."""
    def has(*names: str) -> bool:
        return any((merged_dir / name).is_file() for name in names)

    missing = []
    if not has("config.json"):
        missing.append("config.json")
    if not has("model.safetensors", "model.safetensors.index.json"):
        missing.append("weights (model.safetensors or model.safetensors.index.json)")
    if not (has("tokenizer.json") or (has("vocab.json") and has("merges.txt"))):
        missing.append("tokenizer (tokenizer.json or vocab.json + merges.txt)")
    if not has("tokenizer_config.json"):
        missing.append("tokenizer_config.json")
    if not has("preprocessor_config.json", "processor_config.json"):
        missing.append("image processor (preprocessor_config.json or processor_config.json)")
    in_tokenizer_config = has("tokenizer_config.json") and "chat_template" in json.loads(
        (merged_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    if not (has("chat_template.jinja", "chat_template.json") or in_tokenizer_config):
        missing.append("chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)")
    return missing


def base_model_of(checkpoint: Path) -> str:
    """The base model of an adapter checkpoint: adapter_config.json, else swift's args.json."""
    config = checkpoint / "adapter_config.json"
    if config.is_file():
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if base:
            return str(base)
    for args in (checkpoint / "args.json", checkpoint.parent / "args.json"):
        if args.is_file() and json.loads(args.read_text(encoding="utf-8")).get("model"):
            return str(json.loads(args.read_text(encoding="utf-8"))["model"])
    raise MergeError(f"cannot tell the base model of {checkpoint}: no base_model_name_or_path in "
                     "adapter_config.json and no model in args.json")


# --- 3. the whole step: export, check, report -----------------------------------------------------

def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("ms-swift", "transformers", "peft", "torch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def merge_checkpoint(checkpoint: Path, prompts: Optional[Path] = None, k: int = 8, merged: Optional[Path] = None,
                     **check: Any) -> MergeReport:
    """Merge ``checkpoint`` into ``CHECKPOINT-merged/`` with ``swift export`` (or take an existing
    ``merged`` dir), compare it with base + adapter on ``k`` prompts, write and return the report.

    ``prompts``: evaluation JSONL with ``"prompt"`` records (first ``k``); None: ``k`` drawn pages.
    ``check``: options of ``check_equivalence`` (max_new_tokens, min_new_tokens, atol, rtol, dtype,
    device_map, batch_size). Raises ``MergeError`` when the export fails or the merged dir is
    incomplete; a numerical mismatch is reported (``report.equivalent`` False), not raised.
    """
    checkpoint = Path(checkpoint).resolve()
    if not (checkpoint / "adapter_config.json").is_file():
        raise MergeError(f"{checkpoint} is not a LoRA checkpoint (no adapter_config.json)")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    argv: list[str] = []
    if merged is None:
        merged_dir = checkpoint.with_name(f"{checkpoint.name}-merged")
        argv = export_merged(checkpoint, merged_dir)
        timings["export_s"] = time.perf_counter() - start
    else:
        merged_dir = Path(merged).resolve()
    missing = missing_files(merged_dir)
    if missing:
        raise MergeError(f"merged dir {merged_dir} lacks: {'; '.join(missing)}")
    base = base_model_of(checkpoint)

    with tempfile.TemporaryDirectory(prefix="merge-pages-") as pages:
        if prompts is not None:
            chosen, source = load_prompts(Path(prompts), k), str(prompts)
        else:
            chosen, source = synthetic_prompts(k, Path(pages)), f"synthetic ({k} drawn pages)"
        print(f"[merge] checking {merged_dir} against {base} + {checkpoint.name} on {len(chosen)} prompts", flush=True)
        equivalence = check_equivalence(base, checkpoint, merged_dir, chosen, **check)
    timings.update(equivalence.timings)
    timings["total_s"] = time.perf_counter() - start
    problems = equivalence.problems()
    report = MergeReport(checkpoint=str(checkpoint), merged_dir=str(merged_dir), base_model=base, swift_argv=argv,
                         prompts_source=source, equivalent=not problems,
                         verdict="equivalent" if not problems else "NOT EQUIVALENT", problems=problems,
                         equivalence=equivalence, timings=timings, versions=_versions())
    write_json_atomic(merged_dir / REPORT_NAME, dataclasses.asdict(report))
    return report


@dataclass
class MergeArgs:
    """``python -m patentqa.train.merge`` arguments."""

    checkpoint: str = MISSING  # LoRA checkpoint dir (swift's checkpoint-N)
    prompts: Optional[str] = None  # evaluation JSONL with "prompt" records (e.g. dev_eval.jsonl); none: drawn pages
    k: int = 8  # prompts to compare on; more = stronger check, slower
    merged: Optional[str] = None  # check this merged dir instead of exporting one
    max_new_tokens: int = 16
    min_new_tokens: int = 0  # >0: compare this many positions even where a model stops at once
    atol: Optional[float] = None  # first-step logit tolerance: atol + rtol * max |logit|; default by dtype
    rtol: Optional[float] = None
    dtype: str = "auto"  # auto: the merged config's dtype (what serving loads)
    device_map: str = "auto"  # auto: all GPUs, or cpu without one
    batch_size: int = 8


def main(argv: Optional[list[str]] = None) -> MergeReport:
    """CLI: exit 0 when equivalent, 1 on a mismatch (loud), 2 when the merge itself failed."""
    from patentqa.cli import parse_args

    args = dataclasses.asdict(parse_args(MergeArgs, argv))
    checkpoint, prompts, merged = args.pop("checkpoint"), args.pop("prompts"), args.pop("merged")
    try:
        report = merge_checkpoint(Path(checkpoint), prompts=Path(prompts) if prompts else None,
                                  merged=Path(merged) if merged else None, **args)
    except MergeError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    eq = report.equivalence
    for warning in eq.warnings:
        print(f"[merge] warning: {warning}", file=sys.stderr)
    summary = (f"[merge] {report.verdict}: {eq.k} prompts, max first-step logit diff {eq.max_logit_diff:.3g} "
               f"(tolerance {eq.tolerance:.3g}, {eq.dtype}), adapter effect {eq.adapter_effect:.3g} "
               f"(changes the first token on {eq.adapter_changes_first_token}/{eq.k}); "
               f"report {Path(report.merged_dir) / REPORT_NAME}")
    if not report.equivalent:
        print(report.failure_message(), file=sys.stderr)
        print(summary, file=sys.stderr)
        raise SystemExit(1)
    print(summary)
    return report


if __name__ == "__main__":
    main()
