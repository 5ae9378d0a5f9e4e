"""patentqa/preemption.py on its own (the whole path, with submitit and swift, is tests/e2e/test_preemption.py):
the process tree ends at the signal, then the handler that was there runs, and the job knows its own id."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from patentqa import preemption
from patentqa.train.train import requeued_run

# a child that starts a grandchild in a session of its own, as torchrun starts its ranks
TREE = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "start_new_session=True); print('up', flush=True); time.sleep(60)")


def start_tree() -> tuple[subprocess.Popen[str], list[int]]:
    child = subprocess.Popen([sys.executable, "-c", TREE], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline() == "up\n"
    return child, [child.pid, *(p.pid for p in psutil.Process(child.pid).children(recursive=True))]


def running(pids: list[int]) -> list[int]:
    def up(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return [pid for pid in pids if up(pid)]


@pytest.fixture
def handlers():
    """Put back what SIGUSR2 and SIGTERM had (a test installs its own 'submitit' handlers)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_requeue_signal_ends_the_tree_first_then_submitit_requeues(handlers) -> None:
    seen: list[list[int]] = []

    def submitit(signum, frame):  # what submitit's checkpoint_and_try_requeue does last: exit (local: 144)
        seen.append(running(tree))
        sys.exit(144)

    signal.signal(signal.SIGUSR2, submitit)
    child, tree = start_tree()
    assert len(tree) == 2
    with pytest.raises(preemption.JobInterrupted) as stop, child, preemption.guard(child):
        signal.raise_signal(signal.SIGUSR2)
    assert stop.value.code == 144 and stop.value.signal == "SIGUSR2"
    assert seen == [[]]  # the tree was gone before submitit's handler ran
    assert signal.getsignal(signal.SIGUSR2) is submitit  # restored


def test_bypassed_sigterm_ends_the_tree_and_waits_for_the_requeue_signal(handlers, monkeypatch) -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # submitit logs SIGTERM and goes on
    signal.signal(signal.SIGUSR2, lambda signum, frame: sys.exit(255))  # SLURM: scontrol requeue, exit -1
    monkeypatch.setattr(preemption, "AFTER_TERM_WAIT_S", 30.0)
    child, tree = start_tree()
    with pytest.raises(preemption.JobInterrupted) as stop, child, preemption.guard(child):
        signal.raise_signal(signal.SIGTERM)
        assert not running(tree)  # ended at once; the block goes on
        assert child.wait(timeout=10) == -signal.SIGKILL
        threading.Timer(0.3, signal.raise_signal, (signal.SIGUSR2,)).start()
    assert stop.value.code == 255 and stop.value.signal == "SIGUSR2"


def test_default_handler_ends_the_job_with_128_plus_the_signal(handlers) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    child, tree = start_tree()
    started = time.monotonic()
    with pytest.raises(preemption.JobInterrupted) as stop, child, preemption.guard(child):
        signal.raise_signal(signal.SIGTERM)
    assert stop.value.code == 128 + signal.SIGTERM and not running(tree) and time.monotonic() - started < 10


def test_an_exception_in_the_block_ends_the_tree(handlers) -> None:
    child, tree = start_tree()
    with pytest.raises(KeyboardInterrupt), child, preemption.guard(child):
        raise KeyboardInterrupt
    assert not running(tree)


def test_job_id_is_the_same_in_every_attempt_of_a_job() -> None:
    assert preemption.job_id({}) is None
    assert preemption.job_id({"SLURM_JOB_ID": "812"}) == "slurm:812"
    assert preemption.job_id({"SLURM_JOB_ID": "813", "SLURM_ARRAY_JOB_ID": "812", "SLURM_ARRAY_TASK_ID": "1"}) == \
        "slurm:812_1"
    local = preemption.job_id({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "4242"})
    assert local is not None and local.startswith("local:") and local.endswith(":4242")


def test_a_run_dir_is_resumed_only_by_a_requeue_of_the_job_that_wrote_it(tmp_path: Path, monkeypatch) -> None:
    for var in ("SUBMITIT_EXECUTOR", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "manifest.json").write_text(json.dumps({"job": {"id": "slurm:812", "requeues": 0}}))
    monkeypatch.setenv("SLURM_JOB_ID", "812")
    assert requeued_run(tmp_path)["job"]["id"] == "slurm:812"
    monkeypatch.setenv("SLURM_JOB_ID", "913")  # another job in a run dir it was pointed at
    assert requeued_run(tmp_path) is None
    monkeypatch.delenv("SLURM_JOB_ID")  # not under a scheduler
    assert requeued_run(tmp_path) is None
