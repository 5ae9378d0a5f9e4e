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


def test_lora_r8_dry_run_prints_the_seed_schedule_and_the_inference_plan(tmp_path: Path, reference: Path) -> None:
    from conftest import cache_root

    questions = tmp_path / "data" / "ccks2025" / "train" / "train.jsonl"
    questions.parent.mkdir(parents=True)
    shutil.copy(reference / "seed_round_b_questions.jsonl", questions)
    done = subprocess.run([sys.executable, "-m", "patentqa.train", "+exp=lora_r8", "dry_run=true", "logger=none",
                           f"paths.root={tmp_path}", f"paths.cache_dir={cache_root()}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "--gradient_accumulation_steps 2" in out and "--save_steps 10" in out and "--eval_steps 10" in out
    assert "world size 8; global batch 16" in out and "600 questions" in out
    steps = int(re.search(r"per epoch × 5 epochs = (\d+)", out)[1])
    checkpoints = int(re.search(r"checkpoints: (\d+)", out)[1])
    assert 200 <= steps <= 240 and checkpoints >= 20 and "WARNING: this run leaves" not in out
    assert "inference plan (infer=vllm)" in out and "8 GPU(s) × 79.2 GiB" in out
    assert "recommended: TP 2 × DP 4" in out and "host RAM:" in out
