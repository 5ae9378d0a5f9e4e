"""A job preempted or at its time limit: its child processes end at once, submitit requeues it, and the
requeued job knows it is the same job.

On SLURM (and with submitit's local executor) submitit's own handler (``submitit/core/job_environment.py``)
catches the preemption signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2: sent at preemption and ``signal_delay_s``
before the time limit): it calls the launcher's ``checkpoint`` (Hydra's launcher: the same job again), requeues
it (SLURM: ``scontrol requeue``; local: exit status 144, which its controller restarts) and exits; SIGTERM it
logs and bypasses. Neither ends the processes the job started: ``swift sft``, torchrun and its ranks (each rank
in a session of its own, so a process group misses them) would go on holding the GPUs and writing into the run
dir. ``guard`` ends that process tree first, then runs the handler that was there.

The requeued job runs in the same run dir under the same scheduler job id (``job_id``, recorded in the run
manifest): that is how training tells a requeue of its own run from a new run (patentqa/train/train.py).

This module imports nothing of patentqa, so every stage may use it.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator, Mapping

import psutil

# how long a job whose children a bypassed SIGTERM ended waits for submitit's requeue signal: SLURM sends
# SIGTERM at preemption and the user signal with it (preempt_send_user_signal) or not at all, then SIGKILL after
# the partition's GraceTime; without this wait the job would end before the signal that requeues it
AFTER_TERM_WAIT_S = 300.0
KILL_WAIT_S = 10.0  # a process in uninterruptible sleep (a hung driver or filesystem) ends only when that returns


class JobInterrupted(SystemExit):
    """The job ends on a preemption or termination signal; its run goes on when the job is requeued (or resumed
    with ``resume=true``): not a failure. ``code`` is the exit status: submitit's (144: the local controller
    requeues) or 128 + the signal."""

    def __init__(self, code: Any, signum: int) -> None:
        super().__init__(code)
        self.signal = signal.Signals(signum).name


def preemption_signals() -> tuple[signal.Signals, ...]:
    """submitit's preemption signal (``SUBMITIT_PREEMPT_SIGNAL``, default USR2) and SIGTERM (preemption, scancel)."""
    user = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    return tuple(dict.fromkeys((user, signal.SIGTERM)))


def job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The scheduler's id of this job, the same in each requeued attempt: ``slurm:<id>`` (an array task:
    ``<array id>_<task>``) or ``local:<host>:<controller pid>`` under submitit's local executor; None outside a job."""
    env = os.environ if environ is None else environ
    if env.get("SUBMITIT_EXECUTOR") == "local" and env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"local:{socket.gethostname()}:{env['SUBMITIT_LOCAL_JOB_ID']}"
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm:{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return f"slurm:{env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else None


def end_process_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every process below it, at once, and wait (``KILL_WAIT_S`` at most) until they have
    ended, their GPU memory freed; the pids ended. Each process is stopped before its children are listed, so
    none forks one that escapes; killing is by pid, so ranks in sessions of their own (torchrun's) end too.
    Nothing is reaped here: the caller's ``Popen`` still reads its child's status."""
    try:
        level = [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return []
    tree: list[Any] = []
    while level:
        below = []
        for process in level:
            try:
                process.suspend()
                below += process.children()
            except psutil.NoSuchProcess:
                continue
            tree.append(process)
        level = [p for p in below if p.pid not in {t.pid for t in tree}]
    for process in tree:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + KILL_WAIT_S
    while any(map(_running, tree)) and time.monotonic() < deadline:
        time.sleep(0.01)
    return [p.pid for p in tree]


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _Guard:
    """The handlers ``guard`` installs, and what they saw."""

    def __init__(self, process: subprocess.Popen[Any] | None) -> None:
        self.process = process
        self.previous: dict[int, Any] = {}
        self.ended = False  # the tree was ended on a signal whose handler then returned (submitit's SIGTERM)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python runs signal handlers in the main thread only
        for signum in preemption_signals():
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN:
                self.previous[signum] = previous
                signal.signal(signum, self.handle)

    def restore(self) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self.previous = {}

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """End the tree, then the handler that was there: one that exits becomes ``JobInterrupted``."""
        ended = self.end_tree()
        previous = self.previous.get(signum)
        if not callable(previous):  # the default action of both signals: terminate
            raise JobInterrupted(128 + signum, signum)
        try:
            previous(signum, frame)
        except JobInterrupted:
            raise
        except SystemExit as stop:  # submitit's requeue (checkpoint dumped, job requeued) exits
            raise JobInterrupted(stop.code, signum) from stop
        self.ended = self.ended or ended

    def end_tree(self) -> bool:
        """End the child's tree unless the child was already waited for (its pid may be another process's now);
        whether there was one to end."""
        if self.process is None or self.process.returncode is not None:
            return False
        return bool(end_process_tree(self.process.pid))

    def await_requeue(self) -> None:
        """After a bypassed SIGTERM ended the tree: wait for the requeue signal (its handler raises), then end."""
        deadline = time.monotonic() + AFTER_TERM_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(0.5)
        raise JobInterrupted(128 + signal.SIGTERM, signal.SIGTERM)


@contextmanager
def guard(process: subprocess.Popen[Any] | None = None) -> Iterator[None]:
    """While the block runs, a preemption signal (``preemption_signals``) first ends the tree of ``process``
    (``end_process_tree``), then runs the handler that was there: submitit's requeues and exits, which raises
    ``JobInterrupted`` here, as does a default handler; one that returns (submitit's for SIGTERM) lets the block
    go on, and once the ended child's block is left the job waits ``AFTER_TERM_WAIT_S`` for the requeue signal.
    Leaving the block by any exception also ends the tree. Outside the main thread only that last part works."""
    state = _Guard(process)
    state.install()
    try:
        yield
        if state.ended:
            state.await_requeue()
    except BaseException:
        state.end_tree()
        raise
    finally:
        state.restore()
