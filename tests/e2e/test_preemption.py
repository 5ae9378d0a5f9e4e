"""A training job preempted or at its time limit loses nothing (issue 30.6): Hydra's submitit launcher with
submitit's local executor, interrupted the way SLURM interrupts a job, twice: once after the first checkpoint
(mid-training), once mid-sweep.

Real: the job (``python -m patentqa.train -m hydra/launcher=submitit_local``), submitit's handler of the
preemption signal in it (the launcher's ``checkpoint``: the same job again, dumped), its requeue (exit status
144) and the local controller starting the job again under the same job id, ``swift sft``, the sweep, W&B
offline. Driven by the test: only who sends the signal. The controller sends SIGUSR2 to the job itself at
``timeout_min`` minus ``signal_delay_s`` and SLURM at preemption and before the time limit (``--signal=USR2@N``);
here the test sends it, at the moment it must come. ``LocalJob._interrupt()`` cannot: it signals the controller,
which has no handler for SIGUSR2 and dies, leaving the job running with nobody to requeue it (seen with
submitit 1.5.4).

With ``timeout_min=10`` submitit counts any signal as a time-out (one after min(0.8 x limit, limit - 10 min) does),
so both requeues are time-limit requeues, 2 of the local executor's ``max_num_timeout`` 3; a preemption is the
same path without the count.

The straight run is the session's tiny Qwen3-VL run (``qwen3_run``: same config, 4 steps saved at 2 and 4); its
checkpoints are evaluated on dev with the job's own settings, in this process while the job runs. ~160 s on 2
idle cores with ``qwen3_run`` built (+~60 s to build it).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, smoke_run_overrides
from patentqa.config import compose
from patentqa.eval.sweep import Engines, eval_key, evaluate, sweep_inputs
from patentqa.tracking import checkpoints

pytestmark = pytest.mark.e2e

MODEL = "tiny_qwen3_vl"
AT_ONCE_S = 3.0  # swift's processes must be gone this soon after the signal
AFTER_EXIT_S = 10.0  # and every process the job started (wandb-core too) this soon after the job ended


def job_overrides(root: Path, straight: Any) -> list[str]:
    """``qwen3_run``'s training under ``root``, with W&B (offline) and the sweep after it, reading the data that
    run built (``straight``: its config)."""
    own = {"logger": "logger=wandb", "eval.after_train": "eval.after_train=true",
           "paths.cache_dir": f"paths.cache_dir={straight.paths.cache_dir}"}
    return [*(own.get(o.split("=", 1)[0], o) for o in smoke_run_overrides(root, MODEL)),
            f"paths.data_dir={straight.paths.data_dir}"]


def wait_for(what: str, found: Any, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 400) -> Any:
    """Poll ``found()`` until it is truthy; fail if the job ended or ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        assert proc.poll() is None, f"the job ended before {what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {what} after {timeout_s} s:\n{log.read_text()[-4000:]}")


def job_process(controller: psutil.Process) -> psutil.Process | None:
    """The submitit job (``submitit.core._submit``) the local controller runs now."""
    for child in controller.children():
        try:
            if "submitit.core._submit" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def alive(pids: list[int]) -> list[str]:
    """The processes among ``pids`` still running (a zombie has ended), as 'pid name'."""
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{pid} {' '.join(process.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            continue
    return found


def interrupt(controller: psutil.Process, log: Path, proc: subprocess.Popen[bytes]) -> tuple[list[str], list[str]]:
    """SIGUSR2 to the running job, as the controller does at its time limit and SLURM at preemption. Returns what
    was still alive ``AT_ONCE_S`` after the signal of the ``swift`` process tree the job started, and of all the
    processes it started (its own helpers too: multiprocessing's, wandb-core) ``AFTER_EXIT_S`` after it ended."""
    job = job_process(controller)
    assert job is not None
    swift = [c for c in job.children() if "swift" in " ".join(c.cmdline())]
    tree = [p.pid for c in swift for p in (c, *c.children(recursive=True))]
    every = [c.pid for c in job.children(recursive=True)]
    job.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + AT_ONCE_S
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    swift_left = alive(tree)
    job.wait(timeout=120)  # it exits (144: requeue me); the controller starts it again
    deadline = time.monotonic() + AFTER_EXIT_S
    while alive(every) and time.monotonic() < deadline:
        time.sleep(0.05)
    again = wait_for("the requeued job", lambda: job_process(controller), proc, log, timeout_s=60)
    assert again.pid != job.pid
    return swift_left, alive(every)


def finished(run_dir: Path) -> list[Path]:
    """The sweep's finished results: metrics.json files with their cache key (the scores are written first)."""
    return [p for p in sorted(run_dir.glob("eval/*/*/metrics.json")) if "cache_key" in json.loads(p.read_text())]


def adapter(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "adapter_model.safetensors"))


def dev_metrics(cfg: Any, run_dir: Path, out_root: Path) -> dict[str, dict[str, Any]]:
    """The dev headline of each checkpoint of ``run_dir`` as the sweep computes it (``evaluate``, same key), written
    under ``out_root``: the straight run's half of the comparison (its test split and base model are not needed)."""
    inputs = sweep_inputs(cfg, run_dir)
    key = eval_key(cfg, inputs.build)
    with Engines(cfg, [str(c.path) for c in inputs.found]) as engines:
        return {c.path.name: evaluate(cfg, inputs.build, engines, inputs.build.questions["dev"], "dev", c.path.name, c,
                                      out_root, key)["headline"] for c in inputs.found}


def test_preempted_job_requeues_resumes_and_ends_like_a_straight_run(qwen3_run, tmp_path: Path) -> None:
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (a dev dependency: missing fails)

    straight_cfg, straight = qwen3_run
    log = tmp_path / "job.log"
    argv = [sys.executable, "-m", "patentqa.train", "-m", "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10", *job_overrides(tmp_path, straight_cfg)]
    env = {**os.environ, "WANDB_MODE": "offline"}
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    # the straight run's dev metrics meanwhile, in this process (the job keeps one core busy, mostly)
    straight_dev = ThreadPoolExecutor(1).submit(dev_metrics, compose(job_overrides(tmp_path, straight_cfg)),
                                                straight.run_dir, tmp_path / "straight-eval")
    try:
        launcher = psutil.Process(proc.pid)
        controller = wait_for("submitit's local controller", lambda: next(
            (c for c in launcher.children() if "submitit.local._local" in " ".join(c.cmdline())), None), proc, log)
        run_dir = wait_for("the job's run dir", lambda: next(iter(tmp_path.glob("runs/multirun/*/0_smoke-main")), None),
                           proc, log)

        # 1. preempted during training, right after its first complete checkpoint
        wait_for("checkpoint-2", lambda: checkpoints(run_dir / "swift"), proc, log)
        swift_left, left = interrupt(controller, log, proc)
        assert not swift_left, f"swift's processes alive {AT_ONCE_S} s after the signal: {swift_left}"
        assert not left, f"the interrupted job's processes alive {AFTER_EXIT_S} s after it ended: {left}"

        # 2. preempted again during the sweep, after its first result
        first = wait_for("a first sweep result", lambda: finished(run_dir), proc, log)
        stamped = {p: p.stat().st_mtime_ns for p in first}
        interrupt(controller, log, proc)
        assert proc.wait(timeout=400) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["state"] == "succeeded" and manifest["job"]["requeues"] == 2
    assert manifest["resumed_from"].endswith("checkpoint-2")  # the first interruption came before checkpoint-4
    (submitit_log,) = (p.read_text() for p in run_dir.parent.glob(".submitit/*/*_log.out"))
    assert submitit_log.count("Caught signal SIGUSR2") == 2 and submitit_log.count("Requeued job") == 2

    # the same checkpoints as the straight run: steps 3-4 trained once, from checkpoint-2's state
    done = checkpoints(run_dir / "swift")
    assert [c.step for c in done] == [c.step for c in straight.checkpoints] == [2, 4]
    logged = [[int(r["global_step/max_steps"].split("/")[0]) for r in map(json.loads, p.read_text().splitlines())
               if "global_step/max_steps" in r] for p in sorted((run_dir / "swift").glob("v*/logging.jsonl"))]
    assert len(logged) == 2 and max(logged[0]) == 2 and min(logged[1]) > 2, logged  # nothing trained twice
    for ours, theirs in zip(done, straight.checkpoints):
        a, b = adapter(ours.path), adapter(theirs.path)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), ours.path

    # the sweep finished only what was missing, and its dev metrics are the straight run's
    assert all(p.stat().st_mtime_ns == t for p, t in stamped.items()), "a finished result was computed again"
    report = json.loads((run_dir / "eval" / "sweep.json").read_text())
    theirs = straight_dev.result()
    assert {c["name"]: c["dev"] for c in report["checkpoints"]} == theirs
    assert report["best"]["name"] == max(theirs, key=lambda name: theirs[name]["composite"])

    # one W&B run: every offline segment (tracker, swift's trainer, each attempt) carries the manifest's id
    pieces = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(pieces) >= 6 and {p.rsplit("-", 1)[-1] for p in pieces} == {manifest["wandb"]["id"]}, pieces
