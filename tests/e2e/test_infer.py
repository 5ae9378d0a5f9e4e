"""python -m patentqa.infer on the tiny model: every question answered, submission complete, kill -9 resume;
a LoRA checkpoint's answers; an out dir of another split refused; two data-parallel replicas and two
shard jobs (submitit_local) give the bytes of one replica, and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cache_root
from patentqa import residency
from patentqa.config import compose
from patentqa.data.build import build_dataset
from patentqa.infer.engines import make_engine
from patentqa.infer.pipeline import PipelineSettings, answer_chunk, record_line
from patentqa.infer.run import answer_context, infer, split_questions
from patentqa.infer.shards import UnfinishedParts

pytestmark = pytest.mark.e2e


def overrides(root: Path, out: Path, *extra: str) -> list[str]:
    tiny = cache_root() / "tiny"
    return ["+exp=smoke", f"paths.root={root}", f"paths.cache_dir={root}/cache", "data.synth.n_docs=10",
            f"model.path={tiny}/qwen2_5_vl", f"model.embedder_path={tiny}/qwen2_vl_gme", f"out_dir={out}",
            "split=test", "pipeline.chunk_size=2", "pipeline.style_pass=true",  # every stage, as the seed ran
            "infer.batch_size=2", "infer.max_new_tokens=12", *extra]


def infer_cmd(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "patentqa.infer", *overrides(root, out, *extra)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_vl, tiny_embedder) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("infer")
    out = root / "full"
    done = subprocess.run(infer_cmd(root, out), capture_output=True, text=True, timeout=600,
                          env={**os.environ, residency.LOG_ENV: str(root / "residency.jsonl")})
    assert done.returncode == 0, done.stderr[-3000:]
    return root, out


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_question_answered_and_submission_complete(uninterrupted) -> None:
    root, out = uninterrupted
    questions = lines(Path(compose(overrides(root, root / "unused")).data.dir) / "test" / "test.jsonl")
    predictions = lines(out / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [q["id"] for q in questions]
    for record in predictions:
        assert {"id", "document", "question", "kind", "pages", "raw_answer", "prediction"} <= set(record)
        assert record["pages"], "every answer saw at least one page"
    submission = lines(out / "submission.jsonl")
    assert [s["id"] for s in submission] == [q["id"] for q in questions]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == len(questions) and set(summary["stage_seconds"]) >= {"answer", "shorten"}


def test_inference_starts_after_the_data_stage_released_gme(uninterrupted) -> None:
    root, _ = uninterrupted
    events = residency.read_log(root / "residency.jsonl")
    assert residency.overlaps(events) == [], events
    kinds = [(e["event"], e["kind"]) for e in events]
    assert kinds[-2:] == [("load", "transformers"), ("release", "transformers")], kinds
    assert ("release", "gme") in kinds[:-2] and events[-2]["alive"] == [f"transformers:{events[-2]['name']}"]


def test_kill_9_then_rerun_equals_an_uninterrupted_run(uninterrupted) -> None:
    root, full = uninterrupted
    out = root / "killed"
    predictions = out / "predictions.jsonl"
    process = subprocess.Popen(infer_cmd(root, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if predictions.is_file() and predictions.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = predictions.read_bytes().count(b"\n")
    with open(predictions, "ab") as handle:  # as if killed in the middle of a write
        handle.write(b'{"id": "torn')
    rerun = subprocess.run(infer_cmd(root, out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'"resumed_after": {written - written % 2}' in rerun.stdout
    assert predictions.read_bytes() == (full / "predictions.jsonl").read_bytes()
    ids = [r["id"] for r in lines(predictions)]
    assert len(ids) == len(set(ids))
    again = subprocess.run(infer_cmd(root, out), capture_output=True, text=True, timeout=600)
    assert '"answered_now": 0' in again.stdout, "a finished run answers nothing again"


def test_an_out_dir_holding_another_splits_predictions_is_refused_before_a_model_loads(uninterrupted) -> None:
    root, full = uninterrupted
    before = {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()}
    log = root / "refused_residency.jsonl"
    argv = [a for a in infer_cmd(root, full) if a != "split=test"] + ["split=dev"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, residency.LOG_ENV: str(log)})
    assert done.returncode == 2, done.stderr[-3000:]
    dev = len(split_questions(build_dataset(compose(overrides(root, full))), "dev"))
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {full / 'predictions.jsonl'}: holds answers to other questions than the {dev} asked "
        "(another split's or dataset's predictions); use another out_dir"]
    assert {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()} == before
    assert not log.exists() or residency.read_log(log) == [], "no model loaded"


def test_a_lora_checkpoint_answers_as_that_adapter_not_as_the_base_model(uninterrupted, adapters) -> None:
    root, full = uninterrupted
    adapter, out = adapters[1], root / "lora"
    done = subprocess.run(infer_cmd(root, out, f"checkpoint={adapter}"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["checkpoint"] == str(adapter)
    tuned, base = lines(out / "predictions.jsonl"), lines(full / "predictions.jsonl")
    assert [r["id"] for r in tuned] == [r["id"] for r in base]
    changed = sum(t["raw_answer"] != b["raw_answer"] for t, b in zip(tuned, base))
    assert changed >= len(base) // 2, f"{changed}/{len(base)} answers differ from the base model's"
    # the first chunk again, by an engine holding only this adapter: the same records
    cfg = compose(overrides(root, out, f"checkpoint={adapter}"))
    build = build_dataset(cfg)
    questions = split_questions(build, "test")[:cfg.pipeline.chunk_size]
    engine = make_engine(cfg.infer, cfg.model, [str(adapter)])
    try:
        records = answer_chunk(questions, answer_context(cfg, build, questions), engine,
                               PipelineSettings.from_cfg(cfg.pipeline, cfg.infer), str(adapter))
    finally:
        engine.close()
    assert [record_line(r) for r in records] == [record_line(r) for r in tuned[:len(records)]]


@pytest.fixture(scope="module")
def two_replicas(uninterrupted) -> Path:
    """The same split answered by ``infer.data_parallel_size=2``: two engine processes, one part each."""
    root, _ = uninterrupted
    out = root / "replicas"
    infer(compose(overrides(root, out, "infer.data_parallel_size=2")))  # in this process: the replicas are children
    return out


def same_outputs(out: Path, full: Path) -> None:
    for name in ("predictions.jsonl", "submission.jsonl"):
        assert (out / name).read_bytes() == (full / name).read_bytes(), name


def test_two_replicas_answer_as_one_replica(uninterrupted, two_replicas: Path) -> None:
    _, full = uninterrupted
    same_outputs(two_replicas, full)
    summary = json.loads((two_replicas / "summary.json").read_text())
    parts = summary["parts"]
    assert [p["part"] for p in parts] == [0, 1] and all(p["answered_now"] == p["questions"] > 0 for p in parts)
    assert sum(p["questions"] for p in parts) == summary["questions"] == summary["answered_now"]
    assert parts[0]["cpus"] and not set(parts[0]["cpus"]) & set(parts[1]["cpus"]), "each replica on its own cores"


def test_rerun_after_a_replica_lost_its_last_chunk_redoes_only_those(uninterrupted, two_replicas: Path) -> None:
    root, full = uninterrupted
    part = two_replicas / "parts" / "part-1-of-2.jsonl"
    written = part.read_bytes().splitlines(keepends=True)
    kept = (len(written) - 1) // 2 * 2  # drop the last chunk (pipeline.chunk_size=2), as a crash would
    part.write_bytes(b"".join(written[:kept]) + b'{"id": "torn')
    (two_replicas / "predictions.jsonl").unlink()  # killed before the merge
    parts = infer(compose(overrides(root, two_replicas, "infer.data_parallel_size=2")))["parts"]
    assert [p["answered_now"] for p in parts] == [0, len(written) - kept], "only the lost answers are redone"
    assert parts[1]["resumed_after"] == kept
    same_outputs(two_replicas, full)


def test_shards_through_submitit_local_merge_into_one_submission(uninterrupted, monkeypatch) -> None:
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (a dev dependency: missing fails)
    root, full = uninterrupted
    out = root / "shards"
    argv = [sys.executable, "-m", "patentqa.infer", "-m", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10", *overrides(root, out, "infer.num_shards=2", "infer.shard=0,1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both jobs share this machine; on SLURM each has its own
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    same_outputs(out, full)  # the job that finished last merged

    merge = compose(overrides(root, out, "infer.num_shards=2", "infer.merge=true"))
    part = out / "parts" / "part-1-of-2.jsonl"
    part.rename(part.with_suffix(".away"))
    with pytest.raises(UnfinishedParts, match=r"part 1 \(infer.shard=1\): missing"):
        infer(merge)
    part.with_suffix(".away").rename(part)
    for name in ("predictions.jsonl", "submission.jsonl"):
        (out / name).unlink()
    loads = root / "merge_residency.jsonl"
    monkeypatch.setenv(residency.LOG_ENV, str(loads))  # every model or embedder load is recorded here
    infer(merge)
    assert not loads.exists(), residency.read_log(loads)  # the merge command loads no model
    same_outputs(out, full)
