"""The day-one dry run, as a user types it: ``python -m patentqa.train +exp=lora_r8 dry_run=true`` on the CCKS
layout holding the 600 real questions (no PDFs yet) prints the seed's schedule and the inference plan."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def dry_run(exp: str, root: Path, reference: Path) -> str:
    """What ``python -m patentqa.train +exp=EXP dry_run=true`` prints on the CCKS layout of the 600 real questions."""
    from conftest import cache_root

    questions = root / "data" / "ccks2025" / "train" / "train.jsonl"
    questions.parent.mkdir(parents=True)
    shutil.copy(reference / "seed_round_b_questions.jsonl", questions)
    done = subprocess.run([sys.executable, "-m", "patentqa.train", f"+exp={exp}", "dry_run=true", "logger=none",
                           f"paths.root={root}", f"paths.cache_dir={cache_root()}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_lora_r8_dry_run_prints_the_seed_schedule_and_the_inference_plan(tmp_path: Path, reference: Path) -> None:
    out = dry_run("lora_r8", tmp_path, reference)
    assert "--gradient_accumulation_steps 2" in out and "--save_steps 10" in out and "--eval_steps 10" in out
    assert "world size 8; global batch 16" in out and "600 questions" in out
    steps = int(re.search(r"per epoch × 5 epochs = (\d+)", out)[1])
    checkpoints = int(re.search(r"checkpoints: (\d+)", out)[1])
    assert 200 <= steps <= 240 and checkpoints >= 20 and "WARNING: this run leaves" not in out
    assert "inference plan (infer=vllm)" in out and "8 GPU(s) × 79.2 GiB" in out
    assert "recommended: TP 2 × DP 4" in out and "host RAM:" in out


def test_grpo_r8_dry_run_validates_swift_rlhf_and_prints_rollouts_and_memory(tmp_path: Path, reference: Path) -> None:
    """No lora_r8 run exists yet: the dry run says a real run trains it first, trains nothing, and plans GRPO."""
    out = dry_run("grpo_r8", tmp_path, reference)
    assert "experiment lora_r8 has no swept run of model=qwen2_5_vl_32b yet: a real run trains it first" in out
    assert "swift rlhf arguments validated" in out and "--rlhf_type grpo" in out and "--reward_funcs patentqa" in out
    assert "--vllm_mode colocate" in out and "PATENTQA_REWARD=" in out and "--val_dataset" not in out
    assert "GRPO: 64 completions a step = 8 question(s) × 8 generations" in out
    rows = int(re.search(r"rows:\s+([\d,]+)", out)[1].replace(",", ""))
    steps = int(re.search(r"steps:\s+([\d,]+) per epoch", out)[1].replace(",", ""))
    assert steps == -(-rows * 8 // 64)  # an epoch: every row's 8 completions, 64 a step
    assert "dev evaluations: none during training" in out
    memory = re.search(r"memory per GPU \(GiB\): (.*) = ([\d.]+); ([\d.]+) GiB left of 79.2", out)
    assert memory and "vLLM colocate (0.3 of the GPU) 23.8" in memory[1] and "ERROR" not in out
    assert not (tmp_path / "runs" / "lora_r8").exists()  # the dry run trained nothing
