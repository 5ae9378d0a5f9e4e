"""Launching ``swift sft``: its environment, the streamed subprocess, and what it left behind."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Mapping

from omegaconf import DictConfig

from patentqa import preemption
from patentqa.models import family_of
from patentqa.tracking import swift_log

# variables the launcher sets from its config (launcher.<var lower>) when it has a value
LAUNCH_VARS = ("NPROC_PER_NODE", "CUDA_VISIBLE_DEVICES", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
# of those, the ones that decide how many processes swift starts: an inherited value the launcher does not set
# is dropped, or e.g. NPROC_PER_NODE=8 left in a shell would silently turn launcher=local into an 8-rank
# torchrun whose world size, global batch and steps differ from the plan (config.world_size)
TOPOLOGY_VARS = ("NPROC_PER_NODE", "NNODES", "NODE_RANK")
# the others are the user's, kept unless the launcher sets a value: CUDA_VISIBLE_DEVICES=3 picks the GPU of a
# launcher=local run, MASTER_ADDR/MASTER_PORT keep two jobs on one node off each other's port (torchrun's
# default 29500), and NCCL_* (NCCL_SOCKET_IFNAME, NCCL_IB_DISABLE, ...) tune the interconnect


def image_budget_env(cfg: DictConfig) -> dict[str, str]:
    """swift's image budget for a row that carries none (every SFT row carries its own in
    ``chat_template_kwargs``): the largest per-form budget and the smallest image, in the units the model
    family's swift loader reads (``Family.budget_unit``: Qwen3-VL's and Qwen3.5's convert a MAX_PIXELS at their
    own 32 px a token, so they are given tokens; Qwen2.5-VL is given MAX_PIXELS, as it always was; MiniCPM-V's
    template reads one slice setting for every row, ``model.slices``: MAX_SLICE_NUMS and DOWNSAMPLE_MODE)."""
    from patentqa.data.build import prompt_config

    return family_of(cfg.model).budget_env(max_tokens=max(int(t) for t in cfg.prompt.image_tokens.values()),
                                           min_tokens=int(cfg.prompt.min_image_tokens),
                                           max_pixels=max(prompt_config(cfg).max_pixels.values()),
                                           settings=cfg.model.get("slices"))


def launch_env(cfg: DictConfig) -> dict[str, str]:
    """The environment that decides how swift runs: processes, devices, nodes, image budget."""
    launcher = cfg.launcher
    env = image_budget_env(cfg)  # fallback only: rows carry their budget
    for var in LAUNCH_VARS:
        value = launcher.get(var.lower())
        if value is not None:
            env[var] = str(value)
    return env


def swift_executable() -> str:
    """The ``swift`` command of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "swift"
    return str(beside) if beside.exists() else "swift"


def child_env(launch: dict[str, str], extra: dict[str, str],
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default os.environ) less inherited ``TOPOLOGY_VARS``, plus ``launch`` and ``extra``:
    everything else the user set (CUDA_VISIBLE_DEVICES, MASTER_PORT, NCCL_*, ...) passes through unless
    the launcher sets a value of its own."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in TOPOLOGY_VARS}
    env.update(launch)
    env.update(extra)
    return env


def run_streaming(argv: list[str], env: dict[str, str], log_path: Path, tail: int = 40) -> tuple[int, list[str]]:
    """Run ``argv`` (no shell), echo its output to the console and ``log_path``; (exit code, last lines).
    A preemption signal, or any exception here, ends the child and everything it started at once
    (``preemption.guard``): no ``swift``, torchrun or rank outlives this call."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    last: deque[str] = deque(maxlen=tail)
    with open(log_path, "a", encoding="utf-8", buffering=1) as log, \
            subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             encoding="utf-8", errors="replace", bufsize=1) as process, \
            preemption.guard(process):
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
            last.append(line.rstrip("\n"))
        code = process.wait()
    return code, list(last)


# transformers' warning when torchrun started several ranks but its Trainer runs each one alone
# (on a CPU without patentqa/train/cpu_distributed.py): no gradient all-reduce, N independent trainings
RANKS_APART = "parallel_mode != ParallelMode.DISTRIBUTED"


def ranks_trained_apart(log_path: Path) -> bool:
    """True when swift's log shows the ranks were not one data-parallel job."""
    return log_path.is_file() and RANKS_APART in log_path.read_text(encoding="utf-8", errors="replace")


GRPO_LOGGED = ("reward", "reward_std", "kl", "completions/mean_length")


def swift_summary(swift_dir: Path) -> dict[str, object]:
    """Last/best checkpoint and final losses (GRPO: first and last reward, KL, completion length) from swift's
    logging.jsonl files."""
    summary: dict[str, object] = {}
    for record in swift_log(swift_dir):
        for key in ("loss", "eval_loss", "last_model_checkpoint", "best_model_checkpoint", "global_step/max_steps"):
            if key in record:
                summary[key] = record[key]
        for key in GRPO_LOGGED:  # GRPO's (swift rlhf): the first step's value and the last
            if key in record:
                summary.setdefault(f"{key}@first", record[key])
                summary[key] = record[key]
    return summary
