"""``resume=true`` picks the last complete checkpoint of the latest earlier run of the same experiment, variant and
base model."""
from __future__ import annotations

import json
from pathlib import Path

from patentqa.config import compose
from patentqa.tracking import write_json_atomic
from patentqa.train.train import find_resume_point


def plant_run(runs: Path, name: str, started_at: str, steps: list[int], model: str = "tiny") -> Path:
    """An earlier run's record: manifest (of a run of ``model``) and complete checkpoints (what find_resume_point
    reads)."""
    run_dir = runs / name / started_at.replace(":", "-")
    for step in steps:
        checkpoint = run_dir / "swift" / "v0-x" / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text("{}")
    write_json_atomic(run_dir / "manifest.json", {"name": name, "started_at": started_at, "state": "succeeded",
                                                  "wandb": {"id": f"planted{len(steps)}"},
                                                  "config": {"model": {"name": model}}})
    return run_dir


def test_latest_run_of_this_experiment_last_complete_checkpoint(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    plant_run(runs, "smoke", "2001-01-01T00:00:00+00:00", [2, 4, 6, 8, 10])   # older, more steps
    plant_run(runs, "other", "2099-01-01T00:00:00+00:00", [50])               # newer, another experiment
    latest = plant_run(runs, "smoke", "2026-12-06T05:00:00+00:00", [2, 4])
    (latest / "swift" / "v0-x" / "checkpoint-6").mkdir()                       # partial: no trainer_state.json
    cfg = compose(["+exp=smoke", f"paths.root={tmp_path}"])
    checkpoint, manifest = find_resume_point(cfg, tmp_path / "runs" / "smoke" / "new")
    assert checkpoint.path == latest / "swift" / "v0-x" / "checkpoint-4" and checkpoint.step == 4
    assert manifest["wandb"]["id"] == "planted2"
    assert find_resume_point(compose(["+exp=lora_r8", f"paths.root={tmp_path}"]), tmp_path / "x") is None


def test_another_variant_of_the_experiment_is_not_resumed(tmp_path: Path) -> None:
    """+exp=smoke +exp/ablate=grpo and +exp=smoke are both named smoke: each resumes only its own runs."""
    runs = tmp_path / "runs"
    sft = plant_run(runs, "smoke", "2026-12-06T05:00:00+00:00", [2, 4])
    grpo = plant_run(runs, "smoke", "2026-12-06T06:00:00+00:00", [2])  # newer, the grpo variant
    manifest = json.loads((grpo / "manifest.json").read_text())
    write_json_atomic(grpo / "manifest.json", {**manifest, "config": {**manifest["config"], "variant": "grpo"}})
    checkpoint, _ = find_resume_point(compose(["+exp=smoke", f"paths.root={tmp_path}"]), runs / "smoke" / "new")
    assert checkpoint.path.parent.parent.parent == sft and checkpoint.step == 4
    checkpoint, _ = find_resume_point(compose(["+exp=smoke", "+exp/ablate=grpo", f"paths.root={tmp_path}"]),
                                      runs / "smoke" / "new")
    assert checkpoint.path.parent.parent.parent == grpo and checkpoint.step == 2


def test_a_run_of_another_model_is_not_resumed(tmp_path: Path, capsys) -> None:
    """+exp=smoke model=tiny and +exp=smoke model=tiny_qwen3_vl are both named smoke: each resumes its own model's
    run, and the other is named in one line."""
    runs = tmp_path / "runs"
    qwen2_5 = plant_run(runs, "smoke", "2026-12-06T05:00:00+00:00", [2, 4], model="tiny")
    qwen3 = plant_run(runs, "smoke", "2026-12-06T06:00:00+00:00", [2], model="tiny_qwen3_vl")  # newer
    checkpoint, _ = find_resume_point(compose(["+exp=smoke", f"paths.root={tmp_path}"]), runs / "smoke" / "new")
    assert checkpoint.path.parent.parent.parent == qwen2_5 and checkpoint.step == 4
    assert f"skipped {qwen3}: trained model=tiny_qwen3_vl, this run is model=tiny" in capsys.readouterr().out
    checkpoint, _ = find_resume_point(compose(["+exp=smoke", "model=tiny_qwen3_vl", f"paths.root={tmp_path}"]),
                                      runs / "smoke" / "new")
    assert checkpoint.path.parent.parent.parent == qwen3 and checkpoint.step == 2
    assert find_resume_point(compose(["+exp=smoke", "model=tiny_qwen3_5", f"paths.root={tmp_path}"]),
                             runs / "smoke" / "new") is None
