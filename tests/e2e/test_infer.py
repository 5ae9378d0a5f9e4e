"""python -m patentqa.infer on the tiny model: every question answered, submission complete, kill -9 resume."""
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
