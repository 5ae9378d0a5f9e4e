"""The node check's own logic: the GPU form refuses a machine without CUDA; the memory rule catches an overlap."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from patentqa.gpucheck import (TINY_FAMILIES, Check, Context, environment_check, family_models, format_table,
                               one_model_at_a_time, training_verdict)


def test_gpu_form_fails_on_this_cpu_machine_and_names_the_cause(tmp_path: Path) -> None:
    ok, detail = environment_check(Context(out=tmp_path, form="gpu", ranks=8, steps=2, timeout_s=1))
    assert not ok
    assert "torch.cuda.is_available() is False" in detail or "CPU-only build" in detail  # patentqa.device's causes
    assert "vLLM runs on its CPU platform" in detail
    assert environment_check(Context(out=tmp_path, form="cpu", ranks=2, steps=2, timeout_s=1))[0]


def write_log(path: Path, events: list[tuple[str, str, int]]) -> Path:
    path.write_text("".join(json.dumps({"event": e, "kind": "engine", "name": n, "pid": pid, "time": t}) + "\n"
                            for t, (e, n, pid) in enumerate(events)))
    return path


def test_memory_rule_passes_in_turn_and_fails_on_an_overlap(tmp_path: Path) -> None:
    in_turn = write_log(tmp_path / "a.jsonl", [("load", "hf", 1), ("release", "hf", 1), ("load", "vllm", 1),
                                               ("release", "vllm", 1), ("load", "gme", 2)])
    assert one_model_at_a_time(in_turn) == (True, "3 loads, never two alive at once")
    overlap = write_log(tmp_path / "b.jsonl", [("load", "hf", 1), ("load", "vllm", 1), ("release", "vllm", 1)])
    ok, detail = one_model_at_a_time(overlap)
    assert not ok and "engine:vllm (pid 1) loaded while engine:hf (pid 1) alive" in detail
    assert not one_model_at_a_time(tmp_path / "missing.jsonl")[0]
    assert not one_model_at_a_time(write_log(tmp_path / "c.jsonl", []))[0]


def test_table_marks_failures_and_points_at_the_log() -> None:
    table = format_table([Check("environment", True, 1.0, "ok"), Check("sft_1_rank", False, 2.0, "exit 1", "/x.log")])
    assert "PASS" in table.splitlines()[1] and "FAIL" in table.splitlines()[2] and "log: /x.log" in table


def test_family_rows_cover_every_family_module_by_default() -> None:
    from patentqa.config import compose
    from patentqa.models import FAMILIES, family_of

    assert family_models(["all"]) == list(TINY_FAMILIES) and family_models([]) == []
    covered = {family_of(compose([f"model={m}"]).model).model_type for m in TINY_FAMILIES}
    assert covered == set(FAMILIES), covered  # a new family module needs its tiny model here
    with pytest.raises(SystemExit, match="qwen2_5_vl_32b not among"):
        family_models(["qwen2_5_vl_32b"])


def planted_run(run_dir: Path, summary: dict, checkpoints: int = 2) -> Path:
    """A training run's traces as ``patentqa.train`` leaves them: checkpoints and the manifest's summary."""
    for step in range(1, checkpoints + 1):
        (run_dir / "swift" / "v0-x" / f"checkpoint-{step}").mkdir(parents=True)
        (run_dir / "swift" / "v0-x" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (run_dir / "manifest.json").write_text(json.dumps({"summary": summary}))
    return run_dir


@pytest.mark.parametrize("summary, checkpoints, code, passed, says", [
    ({"swift_world_size": 2}, 2, 0, True, "world size 2, checkpoints ['checkpoint-1', 'checkpoint-2']"),
    ({"swift_world_size": 2, "ranks_trained_apart": True}, 2, 0, False, "the ranks trained apart"),
    ({"swift_world_size": 1}, 2, 0, False, "world size 1"),  # one rank where two were asked
    ({}, 2, 0, False, "world size None"),                     # no manifest summary: nothing shows it was one job
    ({"swift_world_size": 2}, 1, 0, False, "checkpoints ['checkpoint-1']"),
    ({"swift_world_size": 2}, 2, 1, False, "exit 1"),
])
def test_training_row_needs_one_job_of_its_ranks(tmp_path: Path, summary: dict, checkpoints: int, code: int,
                                                 passed: bool, says: str) -> None:
    ok, detail = training_verdict(planted_run(tmp_path / "run", summary, checkpoints), code, ranks=2, steps=2)
    assert ok is passed and says in detail, detail
