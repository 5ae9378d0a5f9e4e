"""python -m patentqa.train on the tiny model when things go wrong, and its dry run (a run that succeeds, its
record and W&B: test_eval.py; resume after kill -9: test_resume.py)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cache_root
from patentqa.config import compose
from patentqa.train.train import TrainFailed, train

pytestmark = pytest.mark.e2e


def smoke(tmp: Path, *overrides: str):
    tiny = cache_root() / "tiny"
    return compose(["+exp=smoke", f"paths.root={tmp}", f"paths.cache_dir={tmp}/cache", "data.synth.n_docs=8",
                    f"model.path={tiny}/qwen2_5_vl", f"model.embedder_path={tiny}/qwen2_vl_gme",
                    "train.max_steps=6", "train.save_steps=3", "train.eval_steps=3", "eval.after_train=false",
                    *overrides])


def wandb_pieces(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def test_swift_failure_marks_the_run_failed(tmp_path: Path, tiny_vl, tiny_embedder, monkeypatch) -> None:
    from patentqa.data.build import build_dataset
    from patentqa.train import train as train_module

    tmp = tmp_path
    monkeypatch.setenv("WANDB_MODE", "offline")
    build = build_dataset(smoke(tmp))
    bad = tmp / "bad_dataset"
    bad.mkdir()
    row = json.loads((build.out_dir / "train.jsonl").read_text().splitlines()[-1])
    row["images"][0] = str(tmp / "missing-page.jpg")  # every row: swift fails at its first step
    (bad / "train.jsonl").write_text((json.dumps(row, ensure_ascii=False) + "\n") * 4)
    (bad / "dev.jsonl").write_text((build.out_dir / "dev.jsonl").read_text())
    (bad / "manifest.json").write_text("{}")
    monkeypatch.setattr(train_module, "build_dataset", lambda _cfg: dataclasses.replace(build, out_dir=bad))
    run_dir = tmp / "runs" / "smoke" / "c"
    with pytest.raises(TrainFailed, match="exited with status"):
        train(smoke(tmp), run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["state"] == "failed" and manifest["exit_code"] != 0
    assert "Error" in manifest["error"] and manifest["error_tail"]
    assert wandb_pieces(run_dir), "the W&B run exists and was finished as failed"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patentqa.train", *args], capture_output=True, text=True, timeout=300)


def test_dry_run_prints_the_8_gpu_command(tmp_path: Path) -> None:
    done = run_cli("+exp=lora_r8", "model=qwen2_5_vl_32b", "launcher=8gpu", "dry_run=true", f"paths.root={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "NPROC_PER_NODE=8" in out and "--deepspeed zero3" in out and "--tuner_type lora" in out
    assert "--lora_rank 8" in out and "--val_dataset " in out and "--device_map" not in out


def test_flag_typo_fails_fast(tmp_path: Path) -> None:
    done = run_cli("+exp=lora_r8", "dry_run=true", "+train.extra_args.train_type=lora", f"paths.root={tmp_path}")
    assert done.returncode == 2 and "renamed to --tuner_type" in done.stderr and "Traceback" not in done.stderr
