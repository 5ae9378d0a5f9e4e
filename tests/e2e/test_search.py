"""The Optuna search for real: 3 smoke trials through Hydra's Optuna sweeper, killed (-9) during
trial 2, rerun: exactly 3 complete trials in the SQLite study, and the report's study page."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser import open_page
from conftest import cache_root

pytestmark = pytest.mark.e2e


def search_command(tmp: Path) -> list[str]:
    tiny = cache_root() / "tiny"
    return [sys.executable, "-m", "patentqa.train", "-m", "+exp=smoke", "+hparams_search=lora",
            "hydra.sweeper.n_trials=3", f"paths.root={tmp}", f"paths.cache_dir={tmp}/cache", "data.synth.n_docs=6",
            f"model.path={tiny}/qwen2_5_vl", f"model.embedder_path={tiny}/qwen2_vl_gme", "logger=none",
            "train.max_steps=4", "train.save_steps=2", "train.eval_steps=2", "eval.include_base=false",
            "infer.max_new_tokens=8"]


def trial_states(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("select number, state from trials order by number").fetchall()


def test_search_survives_kill_9_and_completes_exactly_3_trials(tmp_path: Path, tiny_vl, tiny_embedder) -> None:
    search = tmp_path / "runs" / "search" / "smoke-lora"
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(search_command(tmp_path), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    deadline = time.time() + 600
    try:  # kill -9 once trial 2 (job 1) is training
        while time.time() < deadline and first.poll() is None:
            if list(search.glob("1_*/swift/*/logging.jsonl")) or list(search.glob("1_*/logs/swift_sft.log")):
                break
            time.sleep(0.5)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    db = search / "optuna.db"
    assert trial_states(db) == [(0, "COMPLETE"), (1, "RUNNING")]  # what a kill -9 leaves

    second = subprocess.run(search_command(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 of 3 trials complete" in second.stdout + second.stderr
    assert "multirun: 2 job(s) (Optuna search: 2 trial(s) to run of n_trials=3 (1 complete))" in second.stdout
    states = trial_states(db)
    assert [s for _, s in states].count("COMPLETE") == 3, states  # not 4 or 5
    assert states[1] == (1, "FAIL")  # the interrupted trial, rerun as trial 2 with the same parameters
    with sqlite3.connect(db) as con:
        params = con.execute("select trial_id, param_name, param_value from trial_params").fetchall()
    by_trial = {}
    for trial_id, name, value in params:
        by_trial.setdefault(trial_id, {})[name] = value
    assert by_trial[2] == by_trial[3]  # trial_id is number + 1
    dirs = sorted(p.name for p in search.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert dirs == ["0_smoke-trial", "1_smoke-trial", "2_smoke-trial", "3_smoke-trial"], dirs  # none overwritten
    assert (search / "optimization_results.yaml").is_file()

    out = tmp_path / "report"
    report = subprocess.run([sys.executable, "-m", "patentqa.eval.report", f"runs=[{search}]", f"out={out}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    study = (out / "study.md").read_text(encoding="utf-8")
    assert "Best trial" in study and "train.learning_rate" in study and "interrupted" in study
    assert (out / "study_params.png").is_file()
    page = open_page(out / "study.html")  # the page a person opens renders, with its plot, without errors
    assert page.ink > 0.02 and len(page.images) == 1 and not page.broken_images and not page.console_errors
