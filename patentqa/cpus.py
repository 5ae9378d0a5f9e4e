"""How many CPUs this process may use: what worker pools (page rendering, OCR, synthetic patents) size to.

``os.cpu_count()`` counts the machine's cores. A SLURM job or a container is given fewer: SLURM sets the
process's CPU affinity (and ``SLURM_CPUS_PER_TASK``), a container may cap it with a cgroup CPU quota.
``available_cpus`` takes the smallest of the affinity mask, ``SLURM_CPUS_PER_TASK`` and the cgroup quota,
so a pool starts one worker per CPU it was granted, not one per core of a 128-core node.

Imports nothing of patentqa, so every stage may use it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """CPUs the cgroup quota allows (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus(environ: dict[str, str] | None = None, cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: affinity mask ∩ ``SLURM_CPUS_PER_TASK`` ∩ cgroup quota (at least 1)."""
    environ = os.environ if environ is None else environ
    counts = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)]
    slurm = str(environ.get("SLURM_CPUS_PER_TASK") or "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    quota = cgroup_cpu_limit(cgroup)
    if quota is not None:
        counts.append(max(1, math.floor(quota)))
    return max(1, min(counts))


def pool_size(workers: int | None, jobs: int) -> int:
    """Processes for ``jobs`` independent jobs: ``workers`` when set (> 0), else one per available CPU;
    never more than the jobs, never fewer than 1."""
    return max(1, min(workers or available_cpus(), jobs))
