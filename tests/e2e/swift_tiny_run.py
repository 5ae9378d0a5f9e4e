"""Running the real ``swift`` CLI on the tiny model from tests: environment, logged runs, and
the short LoRA run that engine and merge tests train their adapters with."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from patentqa.data.prompts import to_swift_row
from patentqa.train import merge
from patentqa.train.equivalence import synthetic_prompts

MAX_PIXELS = 280 * 280  # 100 image tokens per page: fast on CPU
ANSWERS = ["左侧", "右侧", "上方", "下方"]


def swift_env() -> dict[str, str]:
    """This process's environment for a single-process, offline ``swift`` run."""
    env = dict(os.environ)
    env.update(MAX_PIXELS=str(MAX_PIXELS), WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", MODELSCOPE_OFFLINE="1")  # never reach for a hub
    for key in ("NPROC_PER_NODE", "NNODES"):  # single process: no torchrun
        env.pop(key, None)
    return env


def run_logged(argv: list[str], cwd: Path, log: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; stdout and stderr go to ``log`` as well as into the result."""
    proc = subprocess.run(argv, cwd=cwd, env=swift_env(), capture_output=True, text=True, timeout=timeout)
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr, encoding="utf-8")
    return proc


def run_or_fail(argv: list[str], cwd: Path, log: Path) -> None:
    """``run_logged``, failing the test with the log's tail when the command fails."""
    proc = run_logged(argv, cwd, log)
    if proc.returncode != 0:
        pytest.fail(f"{argv[:2]} exited {proc.returncode}; log {log}\n{(proc.stdout + proc.stderr)[-4000:]}")


def tiny_lora_sft(tiny_vl: Path, work: Path, max_steps: int, *extra: str) -> Path:
    """A real ``swift sft`` LoRA run (lr 2e-2: a few steps visibly change the model) on 6 synthetic
    figure questions (2 for validation); returns its ``v*-*`` run dir."""
    import swift  # noqa: F401  (make setup installs ms-swift: missing fails, a skip would hide it)
    rows = [to_swift_row(prompt, ANSWERS[i % 4]) for i, prompt in enumerate(synthetic_prompts(8, work))]
    train, val = work / "train.jsonl", work / "val.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:6]), encoding="utf-8")
    val.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[6:]), encoding="utf-8")
    out = work / "swift_out"
    run_or_fail(merge.swift_command() + [
        "sft", "--model", str(tiny_vl), "--model_type", "qwen2_5_vl", "--template", "qwen2_5_vl",
        "--check_model", "false", "--tuner_type", "lora", "--lora_rank", "8", "--lora_alpha", "32",
        "--target_modules", "all-linear", "--max_steps", str(max_steps),
        "--per_device_train_batch_size", "1", "--per_device_eval_batch_size", "1", "--learning_rate", "2e-2",
        "--eval_steps", str(max_steps), "--logging_steps", "1", "--save_only_model", "true",
        "--dataloader_num_workers", "0", "--strict", "true", "--seed", "0",
        "--output_dir", str(out), "--dataset", str(train), "--val_dataset", str(val), "--report_to", "none", *extra,
    ], work, work / "sft.log")
    (run_dir,) = sorted(out.glob("v*-*"))
    return run_dir
