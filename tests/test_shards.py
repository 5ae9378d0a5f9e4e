"""Shard assignment, merge and replica placement (patentqa.infer.shards), without a model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from patentqa.config import compose
from patentqa.data.corpus import Question
from patentqa.infer import shards
from patentqa.infer.pipeline import append_records
from patentqa.infer.shards import (ShardLayout, UnfinishedParts, merge_parts, part_of, part_path, part_questions,
                                   replica_cpus, replica_env, replica_gpus, replica_tensor_parallel)

QUESTIONS = [Question(id=f"q{i}", question=f"问题{i}", document=f"d{i % 3}") for i in range(40)]


def layout(num_shards: int = 2, replicas: int = 1) -> ShardLayout:
    return ShardLayout(num_shards=num_shards, replicas=replicas)


def write_parts(out: Path, parts: int, skip: tuple[int, ...] = ()) -> None:
    """Every part's records as the pipeline writes them (input order within the part)."""
    for part in range(parts):
        if part not in skip:
            append_records(part_path(out, part, parts),
                           [{"id": q.id, "prediction": q.question} for q in part_questions(QUESTIONS, part, parts)])


def test_parts_partition_the_questions_by_a_stable_hash_of_the_id() -> None:
    assert [part_of(f"q{i}", 4) for i in range(8)] == [3, 2, 3, 2, 0, 0, 2, 3]  # sha1, not Python's salted hash()
    parts = [part_questions(QUESTIONS, p, 4) for p in range(4)]
    assert sorted(q.id for part in parts for q in part) == sorted(q.id for q in QUESTIONS)
    for part in parts:  # input order kept within a part, so the pipeline's chunked resume applies
        assert [q.id for q in part] == [q.id for q in QUESTIONS if q in part]
    sizes = [len(part_questions([Question(id=str(i), question="", document="") for i in range(800)], p, 8))
             for p in range(8)]
    assert min(sizes) > 70 and max(sizes) < 130, sizes


def test_layout_gives_each_job_its_replicas_parts() -> None:
    assert ShardLayout(num_shards=2, shard=1, replicas=2).job_parts == [2, 3]
    assert ShardLayout(num_shards=2, shard=1, replicas=2).parts == 4
    assert ShardLayout(num_shards=2, shard=1, replicas=2).owner(3) == "infer.shard=1, replica 1"
    cfg = compose(["infer=vllm", "infer.num_shards=3", "infer.shard=2", "infer.data_parallel_size=2"])
    assert ShardLayout.from_cfg(cfg.infer) == ShardLayout(num_shards=3, shard=2, replicas=2)
    with pytest.raises(ValueError, match=r"infer.shard=2 is not one of 0..1"):
        ShardLayout.from_cfg(compose(["infer.num_shards=2", "infer.shard=2"]).infer)
    with pytest.raises(ValueError, match=r"merge=true merges parts: give the infer.num_shards"):
        ShardLayout.from_cfg(compose(["infer.merge=true"]).infer)
    with pytest.raises(ValueError, match="raise infer.concurrency"):
        ShardLayout.from_cfg(compose(["infer=openai", "infer.data_parallel_size=2"]).infer)


def test_merge_restores_input_order(tmp_path: Path) -> None:
    write_parts(tmp_path, 4)
    merged = merge_parts(tmp_path, QUESTIONS, layout(2, 2))
    assert [r["id"] for r in merged] == [q.id for q in QUESTIONS]
    concatenated = [json.loads(line)["id"] for p in range(4)
                    for line in part_path(tmp_path, p, 4).read_text().splitlines()]
    assert concatenated != [q.id for q in QUESTIONS]  # parts interleave: the merge did reorder


def test_merge_names_a_missing_or_unfinished_shard(tmp_path: Path) -> None:
    write_parts(tmp_path, 2, skip=(1,))
    with pytest.raises(UnfinishedParts, match=r"part 1 \(infer.shard=1\): missing"):
        merge_parts(tmp_path, QUESTIONS, layout(2))
    with pytest.raises(UnfinishedParts, match=r"part 1 \(this command, replica 1\): missing"):
        merge_parts(tmp_path, QUESTIONS, layout(1, 2))
    expected = part_questions(QUESTIONS, 1, 2)
    path = part_path(tmp_path, 1, 2)
    append_records(path, [{"id": q.id, "prediction": ""} for q in expected[:3]])
    with open(path, "ab") as handle:  # a job still writing its next chunk
        handle.write(b'{"id": "torn')
    before = path.read_bytes()
    with pytest.raises(UnfinishedParts, match=rf"part 1 \(infer.shard=1\): 3 of {len(expected)} answered"):
        merge_parts(tmp_path, QUESTIONS, layout(2))
    assert path.read_bytes() == before, "merge only reads: another job may be appending to that part"
    with pytest.raises(UnfinishedParts, match=r"parts of another layout are there: \['part-0-of-2.jsonl'"):
        merge_parts(tmp_path, QUESTIONS, layout(3))


def test_merge_refuses_duplicates_and_foreign_questions(tmp_path: Path) -> None:
    write_parts(tmp_path, 2)
    path = part_path(tmp_path, 0, 2)
    first = json.loads(path.read_text().splitlines()[0])
    append_records(path, [first])
    with pytest.raises(ValueError, match=rf"answers 1 question\(s\) twice, e.g. \['{first['id']}'\]"):
        merge_parts(tmp_path, QUESTIONS, layout(2))
    write_parts(tmp_path / "other", 2)
    foreign = tmp_path / "other"
    append_records(part_path(foreign, 1, 2), [{"id": "elsewhere", "prediction": ""}])
    with pytest.raises(ValueError, match=r"not its share of this split, e.g. \['elsewhere'\]"):
        merge_parts(foreign, QUESTIONS, layout(2))


def test_replicas_get_disjoint_gpu_slices_of_tensor_parallel_size() -> None:
    node = [str(i) for i in range(8)]
    vllm = compose(["infer=vllm", "infer.data_parallel_size=2"]).infer
    assert replica_gpus(node, 2, replica_tensor_parallel(vllm)) == [node[:4], node[4:]]  # auto: an equal share
    assert replica_gpus(node, 2, 2) == [["0", "1"], ["2", "3"]]
    assert replica_gpus(["3", "5"], 2) == [["3"], ["5"]]  # the user's CUDA_VISIBLE_DEVICES, sliced
    assert replica_gpus([], 3) == [[], [], []]  # CPU
    with pytest.raises(ValueError, match=r"data_parallel_size=3 x 4 GPU\(s\) per replica needs 12 GPUs; 8 visible"):
        replica_gpus(node, 3, 4)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert shards.visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5,7"}) == ["3", "5", "7"]
    assert shards.visible_gpus({}) == ["0", "1", "2"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert shards.visible_gpus({"CUDA_VISIBLE_DEVICES": "0"}) == []  # a CPU torch: no GPU whatever the env says


def test_replica_env_pins_gpus_or_cores() -> None:
    user = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "VLLM_CPU_OMP_THREADS_BIND": "0-3", "NCCL_DEBUG": "INFO"}
    gpu = replica_env(["2", "3"], [0, 1], user)
    assert gpu["CUDA_VISIBLE_DEVICES"] == "2,3" and gpu["NCCL_DEBUG"] == "INFO" and "OMP_NUM_THREADS" not in gpu
    cpu = replica_env([], [2, 3], user)
    assert cpu["OMP_NUM_THREADS"] == "2" and "VLLM_CPU_OMP_THREADS_BIND" not in cpu
    assert replica_cpus([3, 0, 1, 2], 2) == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match=r"needs >= 2 cores; this process may use 1"):
        replica_cpus([0], 2)


def test_a_failed_replica_is_named_with_its_log(tmp_path: Path) -> None:
    """A replica that cannot start (here: no config file) fails the job, naming its part and log."""
    with pytest.raises(RuntimeError, match=r"(?s)1 replica\(s\) failed.*part 0 exited 1 \(log .*part-0-of-1.log\)"
                                           r".*No such file.*absent.yaml"):
        shards.run_replicas(tmp_path / "absent.yaml", tmp_path, [0], layout(1), compose([]).infer)


def test_a_replica_dies_with_its_job(tmp_path: Path) -> None:
    """A job killed -9 leaves no replica behind to append to a part that the rerun answers again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    job = ("import subprocess, sys; from patentqa.infer.shards import replica_start\n"
           "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
           "preexec_fn=lambda: replica_start(None))\nprint(child.pid, flush=True)\nchild.wait()")
    parent = subprocess.Popen([sys.executable, "-c", job], stdout=subprocess.PIPE, text=True)
    replica = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(100):  # the kernel delivers the parent-death signal at once; allow scheduling
        try:
            os.kill(replica, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{replica}/stat").read_text().split()[2] == "Z":  # killed, not yet reaped by init
            return
        time.sleep(0.05)
    os.kill(replica, signal.SIGKILL)
    raise AssertionError("the replica outlived its job")
