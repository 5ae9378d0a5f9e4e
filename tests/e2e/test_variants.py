"""Task and training variants on the tiny model: round A and round B in one run, full fine-tuning
(real `swift sft --tuner_type full`), the sweep loading each full checkpoint as the model, its
cache, the report's accuracy and failure counts, and vLLM/transformers parity on a full checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
import yaml

from conftest import REPO, cache_root
from patentqa import residency
from patentqa.config import compose
from patentqa.train.train import train

pytestmark = pytest.mark.e2e


def smoke_a(tmp: Path, *overrides: str):
    tiny = cache_root() / "tiny"
    return compose(["+exp=smoke_a", "train=full", "data.rounds=[a,b]", f"paths.root={tmp}",
                    f"paths.cache_dir={tmp}/cache", "data.synth.n_docs=8", "data.split.dev=0.25",
                    f"model.path={tiny}/qwen2_5_vl", f"model.embedder_path={tiny}/qwen2_vl_gme",
                    "train.max_steps=4", "train.save_steps=2", "train.eval_steps=2", "train.learning_rate=1e-4",
                    "train.gradient_accumulation_steps=1", "eval.after_train=true", "infer.max_new_tokens=12",
                    *overrides])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_vl, tiny_embedder):
    tmp = tmp_path_factory.mktemp("variants")
    run_dir = tmp / "runs" / "smoke_a" / "full"
    patch = pytest.MonkeyPatch()
    patch.setenv(residency.LOG_ENV, str(tmp / "residency.jsonl"))  # every model load and release
    try:
        result = train(smoke_a(tmp), run_dir)
    finally:
        patch.undo()
    return tmp, run_dir, result


def test_full_fine_tuning_saves_whole_models_with_the_vision_tower_frozen(full_run) -> None:
    _, run_dir, result = full_run
    assert result.exit_code == 0 and [c.step for c in result.checkpoints] == [2, 4]
    for checkpoint in result.checkpoints:
        assert checkpoint.full and any(checkpoint.path.glob("model*.safetensors"))
        assert not (checkpoint.path / "adapter_config.json").exists()
    args = yaml.safe_load((run_dir / "swift_args.yaml").read_text())
    assert args["tuner_type"] == "full" and args["freeze_vit"] is True
    base = load_file(str(Path(args["model"]) / "model.safetensors"))
    for checkpoint in result.checkpoints:  # the frozen vision tower is saved exactly as it was loaded
        saved = {k: v for path in checkpoint.path.glob("model*.safetensors") for k, v in load_file(str(path)).items()}
        visual = [k for k in base if ".visual." in f".{k}"]
        assert visual and all(k in saved and saved[k].equal(base[k]) for k in visual), checkpoint.path
        assert any(not saved[k].equal(base[k]) for k in base if k in saved and k not in visual), "nothing trained"


def test_sweep_scores_every_full_checkpoint_and_each_round_by_its_metric(full_run) -> None:
    _, run_dir, _ = full_run
    sweep = json.loads((run_dir / "eval" / "sweep.json").read_text())
    assert sweep["full_checkpoints"] == 2 and sweep["select_by"] == "accuracy"
    for name in ("checkpoint-2", "checkpoint-4", "base"):
        metrics = json.loads((run_dir / "eval" / "dev" / name / "metrics.json").read_text())
        stats = metrics["aggregate"]["metrics"]
        assert {"accuracy", "char_f1"} <= set(stats), name
        accuracy = stats["accuracy"]  # over round-A items only, with its interval
        assert 0.0 <= accuracy["ci_low"] <= accuracy["mean"] <= accuracy["ci_high"] <= 1.0
        assert 0 < accuracy["n"] < metrics["aggregate"]["n"] and 0 < stats["char_f1"]["n"] < metrics["aggregate"]["n"]
        rows = [json.loads(line) for line in (run_dir / "eval" / "dev" / name / "scores.jsonl").read_text().splitlines()]
        by_round = {r["round"] for r in rows}
        assert by_round == {"a", "b"}
        for row in rows:  # each item by its own metric
            own = row["scores"]["accuracy"] if row["round"] == "a" else row["scores"]["composite"]
            assert row["scores"]["composite"] == own
        predictions = [json.loads(line) for line in
                       (run_dir / "eval" / "dev" / name / "predictions.jsonl").read_text().splitlines()]
        assert all(r["prediction"] in ("", "A", "B", "C", "D") and "unparsed" in r
                   for r in predictions if r["round"] == "a")
        assert len(predictions) == len(rows), "unparsed replies are scored, never dropped"
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["failures"], "the report has a failures table"
    for label, failures in report["failures"].items():  # each row counts the unparsed replies of its own answers
        path = run_dir / "eval" / failures["split"] / failures["checkpoint"] / "predictions.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert (failures["n"], failures["unparsed"]) == (len(records), sum(bool(r.get("unparsed")) for r in records)), \
            (label, failures, path)
    assert "accuracy" in (run_dir / "report" / "report.md").read_text()


def test_the_full_sweep_closes_each_model_before_loading_the_next(full_run) -> None:
    tmp, run_dir, _ = full_run
    events = residency.read_log(tmp / "residency.jsonl")
    assert residency.overlaps(events) == [], events
    loads = [e["name"] for e in events if e["event"] == "load" and e["kind"] == "transformers"]
    checkpoints = [str(c) for c in sorted((run_dir / "swift").glob("v*/checkpoint-*"))]
    assert loads[0].endswith("qwen2_5_vl") and set(checkpoints) <= set(loads), loads  # base, then each checkpoint
    assert all(e["alive"] == [f"{e['kind']}:{e['name']}"] for e in events if e["event"] == "load")


def test_second_sweep_loads_no_model(full_run) -> None:
    tmp, run_dir, _ = full_run
    out = subprocess.run([sys.executable, "-m", "patentqa.eval", f"run_dir={run_dir}"], cwd=tmp,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for name in ("base", "checkpoint-2", "checkpoint-4"):
        assert any(name in line and "(cached)" in line for line in out.stdout.splitlines()), out.stdout


def test_vllm_answers_a_full_checkpoint_as_transformers_does(full_run) -> None:
    _, run_dir, _ = full_run
    log = run_dir / "parity_residency.jsonl"
    out = subprocess.run([sys.executable, "-m", "patentqa.infer.parity", f"run_dir={run_dir}", "checkpoints=1", "base=false",
                          "per_form=1", "max_new_tokens=8"], cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, residency.LOG_ENV: str(log)})
    report = json.loads((run_dir / "eval" / "parity.json").read_text())
    assert report["full_checkpoints"] == 1 and report["targets"] == ["checkpoint-4"], report["targets"]
    assert out.returncode == 0 and report["all_identical"], out.stdout[-4000:] + out.stderr[-2000:]
    events = residency.read_log(log)  # transformers' traces first, its engine closed, then vLLM
    assert [(e["event"], e["kind"]) for e in events] == [("load", "transformers"), ("release", "transformers"),
                                                         ("load", "vllm"), ("release", "vllm")], events
