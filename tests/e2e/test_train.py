"""python -m patentqa.train on the tiny model: real swift sft, run record, W&B, failure (resume after kill -9:
test_resume.py)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cache_root
from patentqa import residency
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


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_vl, tiny_embedder, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("train")
    run_dir = tmp / "runs" / "smoke" / "a"
    monkeypatch_module.setenv(residency.LOG_ENV, str(tmp / "residency.jsonl"))  # every model load and release
    result = train(smoke(tmp), run_dir)
    return tmp, run_dir, result


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_API_KEY", "sk-fake-0123456789abcdef")  # must never reach a file
    yield patch
    patch.undo()


def test_training_leaves_checkpoints_manifest_and_one_wandb_run(first_run) -> None:
    _, run_dir, result = first_run
    assert result.exit_code == 0 and [c.step for c in result.checkpoints] == [3, 6]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["state"] == "succeeded" and manifest["exit_code"] == 0
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert manifest["git"]["sha"] == head and isinstance(manifest["git"]["dirty"], bool)  # tests run in a clone
    assert manifest["versions"]["ms-swift"] and manifest["dataset"]["manifest_sha256"]
    assert manifest["seeds"] == {"seed": 0, "data_seed": 0} and manifest["launch_env"]["MAX_PIXELS"] == "100352"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "swift_args.yaml").is_file()
    assert "loss" in (run_dir / "logs" / "swift_sft.log").read_text()
    pieces = wandb_pieces(run_dir)
    run_id = manifest["wandb"]["id"]
    assert len(pieces) >= 2 and all(p.name.endswith(run_id) for p in pieces)
    history = b"".join(f.read_bytes() for p in pieces for f in p.glob("*.wandb"))
    assert b"train/loss" in history, "swift's trainer logged into the same W&B run"


def test_gme_is_released_before_swift_sft_starts(first_run) -> None:
    tmp, _, _ = first_run
    events = residency.read_log(tmp / "residency.jsonl")
    assert residency.overlaps(events) == [], events
    kinds = [(e["event"], e["kind"]) for e in events]
    sft = kinds.index(("load", "swift sft"))
    assert ("load", "gme") in kinds[:sft] and kinds[sft - 1] == ("release", "gme"), kinds
    assert events[sft]["alive"] == [f"swift sft:{events[sft]['name']}"]


def test_no_secret_in_any_file(first_run) -> None:
    _, run_dir, _ = first_run
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert b"sk-fake-0123456789abcdef" not in path.read_bytes(), path


def test_swift_failure_marks_the_run_failed(first_run, monkeypatch) -> None:
    tmp, _, _ = first_run
    from patentqa.data.build import build_dataset
    from patentqa.train import train as train_module

    cfg = smoke(tmp)
    build = build_dataset(cfg)
    bad = tmp / "bad_dataset"
    bad.mkdir()
    rows = (build.out_dir / "train.jsonl").read_text().splitlines()
    row = json.loads(rows[-1])
    row["images"][0] = str(tmp / "missing-page.jpg")  # swift meets it when it reaches this row
    (bad / "train.jsonl").write_text("\n".join(rows[:-1] + [json.dumps(row, ensure_ascii=False)]) + "\n")
    (bad / "dev.jsonl").write_text((build.out_dir / "dev.jsonl").read_text())
    (bad / "manifest.json").write_text("{}")
    monkeypatch.setattr(train_module, "build_dataset", lambda _cfg: dataclasses.replace(build, out_dir=bad))
    run_dir = tmp / "runs" / "smoke" / "c"
    with pytest.raises(TrainFailed, match="exited with status"):
        train(smoke(tmp, "train.max_steps=200"), run_dir)
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
