"""Where GRPO starts when one experiment name has runs of several base models (patentqa/train/grpo.py): a lookup by
name takes the latest swept run of this model, skipping the others in one line each; from a run dir GRPO takes
that run's model, and a ``model=`` naming another one stops before anything is built or merged."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from conftest import REPO, cache_root
from patentqa.config import compose
from patentqa.tracking import write_json_atomic
from patentqa.train.grpo import sft_run


def plant_swept_run(root: Path, model: str, started_at: str) -> Path:
    """A succeeded, swept SFT run of ``+exp=smoke model=MODEL`` under ``root/runs``: its manifest (with the run's
    resolved model config, as train() writes it) and eval/sweep.json naming its best checkpoint."""
    cfg = compose(["+exp=smoke", f"model={model}", f"paths.root={root}", f"paths.cache_dir={cache_root()}"])
    run_dir = root / "runs" / "smoke" / f"{model}-{started_at[:10]}"
    best = run_dir / "swift" / "v0-x" / "checkpoint-4"
    best.mkdir(parents=True)
    write_json_atomic(run_dir / "manifest.json", {"name": "smoke", "state": "succeeded", "started_at": started_at,
                                                  "config": OmegaConf.to_container(cfg, resolve=True)})
    write_json_atomic(run_dir / "eval" / "sweep.json", {"best": {"name": best.name, "path": str(best)}})
    return run_dir


def grpo_cli(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patentqa.train", "+exp=smoke_grpo", f"paths.root={root}",
                           f"paths.cache_dir={cache_root()}", "logger=none", *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_a_lookup_by_name_takes_the_latest_run_of_this_model(tmp_path: Path, capsys) -> None:
    qwen2_5 = plant_swept_run(tmp_path, "tiny", "2026-12-06T05:00:00+00:00")
    qwen3 = plant_swept_run(tmp_path, "tiny_qwen3_vl", "2026-12-06T06:00:00+00:00")  # newer
    assert sft_run(compose(["+exp=smoke_grpo", f"paths.root={tmp_path}"])) == qwen2_5.resolve()
    assert f"skipped {qwen3}: trained model=tiny_qwen3_vl, this run is model=tiny" in capsys.readouterr().out
    assert sft_run(compose(["+exp=smoke_grpo", "model=tiny_qwen3_vl", f"paths.root={tmp_path}"])) == qwen3.resolve()
    assert sft_run(compose(["+exp=smoke_grpo", "model=tiny_qwen3_5", f"paths.root={tmp_path}"])) is None


def test_from_a_run_dir_grpo_takes_its_model_or_stops_in_one_line(tmp_path: Path) -> None:
    qwen3 = plant_swept_run(tmp_path, "tiny_qwen3_vl", "2026-12-06T06:00:00+00:00")
    before = sorted(p for p in tmp_path.rglob("*"))
    named = grpo_cli(tmp_path, f"train.init_from={qwen3}", "model=tiny")
    assert named.returncode == 2, named.stdout[-2000:] + named.stderr[-2000:]
    assert (f"train.init_from={qwen3} trained model=tiny_qwen3_vl, this command names model=tiny: drop model= "
            in named.stderr), named.stderr
    assert "Traceback" not in named.stderr
    written = [p for p in tmp_path.rglob("*") if p not in before and p.is_file()
               and ".hydra" not in p.parts and p.name != "__main__.log"]  # Hydra's own record of the command
    assert not written, written  # no manifest, no dataset, no merge
    taken = grpo_cli(tmp_path, f"train.init_from={qwen3}", "dry_run=true")
    assert taken.returncode == 0, taken.stdout[-2000:] + taken.stderr[-2000:]
    assert f"GRPO trains model=tiny_qwen3_vl, the model of {qwen3}" in taken.stdout
    assert f"dry run: GRPO starts from {qwen3}/swift/v0-x/checkpoint-4 (best on dev of {qwen3.resolve()})" in \
        taken.stdout, taken.stdout[-3000:]
    assert "--model_type qwen3_vl" in taken.stdout, taken.stdout[-3000:]
