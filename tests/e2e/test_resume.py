"""Training killed with -9 during ``swift sft``: ``resume=true`` continues from the last complete checkpoint
of the latest earlier run of the experiment, skips a partial one, and continues the same W&B run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cache_root, kill_after_checkpoints
from patentqa.tracking import checkpoints
from test_resume_point import plant_run

pytestmark = pytest.mark.e2e


def overrides(tmp: Path, *extra: str) -> list[str]:
    tiny = cache_root() / "tiny"
    return ["+exp=smoke", f"paths.root={tmp}", f"paths.cache_dir={tmp}/cache", "data.synth.n_docs=6",
            f"model.path={tiny}/qwen2_5_vl", f"model.embedder_path={tiny}/qwen2_vl_gme", "logger=wandb",
            "train.max_steps=400", "train.save_steps=2", "train.eval_steps=400", "train.logging_steps=2",
            "eval.after_train=false", *extra]


def test_kill_9_mid_training_then_resume(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    plant_run(runs, "smoke", "2001-01-01T00:00:00+00:00", [2, 4, 6, 8, 10])  # older run of this experiment
    plant_run(runs, "other", "2099-01-01T00:00:00+00:00", [50])              # newer run of another experiment
    env = {**os.environ, "WANDB_MODE": "offline"}
    killed = runs / "smoke" / "killed"
    argv = [sys.executable, "-m", "patentqa.train", *overrides(tmp_path), f"hydra.run.dir={killed}"]
    last = kill_after_checkpoints(argv, killed, 2, tmp_path / "killed.log", env)[-1]
    first = json.loads((killed / "manifest.json").read_text())
    assert first["state"] == "running" and "ended_at" not in first  # it never got to record an end
    partial = last.path.parent / f"checkpoint-{last.step + 2}"       # being written when the kill came
    partial.mkdir(exist_ok=True)
    for name in ("trainer_state.json",):
        (partial / name).unlink(missing_ok=True)
    (partial / "adapter_model.safetensors").write_bytes(b"half")

    resumed = runs / "smoke" / "resumed"
    again = subprocess.run([sys.executable, "-m", "patentqa.train",
                            *overrides(tmp_path, "resume=true", f"train.max_steps={last.step + 2}"),
                            f"hydra.run.dir={resumed}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resume: continuing from {last.path} (step {last.step})" in again.stdout
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert manifest["resumed_from"] == str(last.path) and manifest["state"] == "succeeded"
    assert [c.step for c in checkpoints(resumed / "swift")] == [last.step + 2]  # only what was left is trained
    assert manifest["wandb"]["id"] == first["wandb"]["id"]  # the killed run's W&B run continues
    # W&B offline writes one run id in turns (tracker, swift's trainer, tracker): pieces in both run dirs, one id
    for run in (killed, resumed):
        pieces = [p.name for p in (run / "wandb").glob("offline-run-*")]
        assert pieces and {p.rsplit("-", 1)[-1] for p in pieces} == {first["wandb"]["id"]}, pieces
