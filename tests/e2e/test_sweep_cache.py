"""The checkpoint sweep's cache (patentqa/eval/sweep.py), on a run dir laid out by hand from the two
real LoRA checkpoints of the `adapters` fixture: only generation on the tiny model, no training.

A second call evaluates only the new checkpoint; a change outside the evaluation key (batch size)
evaluates nothing and loads no model; a change inside it (max_new_tokens) evaluates everything again.
A sweep killed with -9 after its first checkpoint resumes without redoing it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from conftest import smoke_run_dir
from patentqa import residency
from patentqa.config import apply_overrides
from patentqa.eval.sweep import sweep

pytestmark = pytest.mark.e2e


def dev_run(root: Path) -> Path:
    """Every evaluation a checkpoint's on dev: 1 dev document of 4 questions, no base model, no test split."""
    return smoke_run_dir(root, "data.synth.n_docs=6", "data.synth.questions_per_doc=4", "data.split.test=0",
                         "eval.include_base=false", "infer.max_new_tokens=8", "logger=none")


def add_checkpoint(run_dir: Path, adapter: Path) -> None:
    """Where swift saves it: RUN/swift/vN-TIME/checkpoint-STEP (with its trainer_state.json)."""
    assert (adapter / "trainer_state.json").is_file(), adapter
    shutil.copytree(adapter, run_dir / "swift" / "v0-20261206-000000" / adapter.name)


def call(run_dir: Path, capsys: pytest.CaptureFixture, *overrides: str) -> dict[str, Any]:
    """One sweep as `python -m patentqa.eval run_dir=RUN *overrides` runs it (no W&B); what it printed and loaded."""
    log = run_dir / f"residency-{len(list(run_dir.glob('residency-*')))}.jsonl"
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(residency.LOG_ENV, str(log))
        sweep(apply_overrides(OmegaConf.load(run_dir / "config.yaml"), list(overrides)), run_dir)
    dev = [line.split()[1].rstrip(":") + (" (cached)" if line.endswith("(cached)") else "")
           for line in capsys.readouterr().out.splitlines() if line.startswith("dev ")]
    events = residency.read_log(log) if log.exists() else []
    loads = [e["kind"] for e in events if e["event"] == "load" and e["kind"] != "gme"]  # gme: the first call's data
    return {"dev": dev, "loads": loads}


def key(run_dir: Path, name: str) -> str:
    return json.loads((run_dir / "eval" / "dev" / name / "metrics.json").read_text())["cache_key"]


def test_sweep_cache_evaluates_new_checkpoints_and_changed_configs_only(tmp_path: Path, capsys, adapters,
                                                                         tiny_embedder) -> None:
    early, late = adapters
    run_dir = dev_run(tmp_path)
    add_checkpoint(run_dir, early)
    assert call(run_dir, capsys) == {"dev": [early.name], "loads": ["transformers"]}
    first = (run_dir / "eval" / "dev" / early.name / "predictions.jsonl").read_bytes()

    add_checkpoint(run_dir, late)  # training went on: one more checkpoint
    assert call(run_dir, capsys) == {"dev": [f"{early.name} (cached)", late.name], "loads": ["transformers"]}
    assert (run_dir / "eval" / "dev" / early.name / "predictions.jsonl").read_bytes() == first

    assert call(run_dir, capsys, "infer.batch_size=1") == {  # not in the key: answers do not change
        "dev": [f"{early.name} (cached)", f"{late.name} (cached)"], "loads": []}

    keys = {name: key(run_dir, name) for name in (early.name, late.name)}
    assert call(run_dir, capsys, "infer.max_new_tokens=4") == {"dev": [early.name, late.name], "loads": ["transformers"]}
    assert all(key(run_dir, name) != keys[name] for name in keys)


def test_a_sweep_killed_after_its_first_checkpoint_resumes_without_redoing_it(tmp_path: Path, capsys, adapters,
                                                                               tiny_embedder) -> None:
    early, late = adapters
    run_dir = dev_run(tmp_path)
    for adapter in adapters:
        add_checkpoint(run_dir, adapter)
    finished = run_dir / "eval" / "dev" / early.name / "metrics.json"
    process = subprocess.Popen([sys.executable, "-m", "patentqa.eval", f"run_dir={run_dir}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if finished.is_file() and "cache_key" in json.loads(finished.read_text()):  # scored and stamped: done
            break
        time.sleep(0.02)
    assert process.poll() is None, "the sweep finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run_dir / "eval" / "sweep.json").exists()
    before = {p.name: p.read_bytes() for p in finished.parent.iterdir()}
    assert call(run_dir, capsys) == {"dev": [f"{early.name} (cached)", late.name], "loads": ["transformers"]}
    assert {p.name: p.read_bytes() for p in finished.parent.iterdir()} == before
    assert (run_dir / "eval" / "sweep.json").is_file()
