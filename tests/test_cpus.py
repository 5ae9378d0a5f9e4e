"""Worker pools size to the CPUs the job was granted (patentqa/cpus.py), not to the node's cores."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from patentqa import cpus
from patentqa.data import pages
from patentqa.data.corpus import inspect_pdf
from salted import scan_pdf

NODE = set(range(128))  # a 128-core node


@pytest.fixture
def big_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: NODE)
    monkeypatch.setattr(os, "cpu_count", lambda: len(NODE))


def test_slurm_affinity_and_cgroup_quota_each_bound_the_count(big_node, tmp_path: Path) -> None:
    none = tmp_path / "no-cgroup"
    assert cpus.available_cpus({}, none) == 128
    assert cpus.available_cpus({"SLURM_CPUS_PER_TASK": "16"}, none) == 16
    assert cpus.available_cpus({"SLURM_CPUS_PER_TASK": ""}, none) == 128
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # docker --cpus 2.5 (cgroup v2)
    assert cpus.cgroup_cpu_limit(tmp_path) == 2.5 and cpus.available_cpus({"SLURM_CPUS_PER_TASK": "16"}, tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no quota
    assert cpus.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.available_cpus({}, v1) == 4


def test_affinity_alone_bounds_the_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 5})  # srun --cpu-bind / taskset
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert cpus.available_cpus({}, tmp_path) == 2
    assert cpus.pool_size(None, 10) == 2 and cpus.pool_size(6, 10) == 6 and cpus.pool_size(None, 1) == 1


def test_page_rendering_starts_one_worker_per_granted_cpu(big_node, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    started: list[int] = []
    real = pages.ProcessPoolExecutor

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, max_workers: int) -> None:
            started.append(max_workers)
            super().__init__(max_workers=max_workers)

    monkeypatch.setattr(pages, "ProcessPoolExecutor", Recording)
    documents = []
    for index in range(3):
        scan_pdf(tmp_path / f"d{index}.pdf", pages=2, seed=index)
        documents.append(inspect_pdf(tmp_path / f"d{index}.pdf"))
    result = pages.render_documents(documents, tmp_path / "cache", pages.RenderSpec(max_pixels=50_176), progress=False)
    assert started == [2] and result.rendered == 6 and not result.problems  # not 128 (the node) nor 3 (the PDFs)
