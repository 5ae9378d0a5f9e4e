"""Questions split into parts by id: data-parallel replicas on one node, shard jobs across nodes.

A layout has P = ``infer.num_shards`` × ``infer.data_parallel_size`` parts; question ``q`` belongs
to part ``sha1(q.id) mod P``, fixed by its id (a reordered or extended split keeps every answered
question in its part). Job K (``infer.shard=K``: one member of a Hydra multirun / SLURM array)
owns parts K·dp … K·dp + dp - 1. With dp = 1 it answers its part in-process; with dp > 1 it starts
one engine process per part (``python -m patentqa.infer.replica``), each pinned to its own
GPUs (``CUDA_VISIBLE_DEVICES``: its slice of the visible devices, ``tensor_parallel_size``
GPUs each) or, on a CPU, its own cores. No coordination between them: vLLM's offline data
parallelism is also N processes each answering its share (``LLM(data_parallel_size=N)`` in one
process raises in vLLM 0.32), and a SLURM array does the same across nodes.

Each part is answered by the resumable pipeline into ``parts/part-G-of-P.jsonl`` (input order
within the part, chunked appends), so a rerun redoes only what a crash lost. ``merge_parts``
checks every part holds exactly its questions (no duplicate, none foreign, none missing) and
returns the records in input order; the job that finds every part finished writes
``predictions.jsonl`` + ``submission.jsonl`` (atomic writes: two jobs merging at once write the
same bytes); ``infer.merge=true`` merges without loading a model.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from patentqa.config import cfg_get
from patentqa.data.corpus import Question
from patentqa.infer.pipeline import read_predictions

PARTS_DIR = "parts"


@dataclass(frozen=True)
class ShardLayout:
    """Which parts exist and which of them this job answers (the ``infer`` config's four keys)."""

    num_shards: int = 1          # jobs the questions are split over
    shard: int = 0               # the job this is
    replicas: int = 1            # engine processes per job (data_parallel_size)
    merge_only: bool = False     # merge finished parts, answer nothing

    @classmethod
    def from_cfg(cls, infer_cfg: Any) -> ShardLayout:
        layout = cls(num_shards=int(cfg_get(infer_cfg, "num_shards", 1)), shard=int(cfg_get(infer_cfg, "shard", 0)),
                     replicas=int(cfg_get(infer_cfg, "data_parallel_size", 1)),
                     merge_only=bool(cfg_get(infer_cfg, "merge", False)))
        if layout.num_shards < 1 or layout.replicas < 1:
            raise ValueError(f"infer.num_shards ({layout.num_shards}) and infer.data_parallel_size "
                             f"({layout.replicas}) must be >= 1")
        if not 0 <= layout.shard < layout.num_shards:
            raise ValueError(f"infer.shard={layout.shard} is not one of 0..{layout.num_shards - 1} (infer.num_shards)")
        if layout.merge_only and layout.parts == 1:
            raise ValueError("infer.merge=true merges parts: give the infer.num_shards (and infer.data_parallel_size) "
                             "they were answered with")
        if layout.replicas > 1 and str(cfg_get(infer_cfg, "name", "")) == "openai":
            raise ValueError("infer=openai: the server runs the replicas; raise infer.concurrency instead of "
                             "infer.data_parallel_size")
        return layout

    @property
    def parts(self) -> int:
        return self.num_shards * self.replicas

    @property
    def job_parts(self) -> list[int]:
        """The parts this job answers, one per replica."""
        return list(range(self.shard * self.replicas, (self.shard + 1) * self.replicas))

    def owner(self, part: int) -> str:
        """Who answers ``part``, as the override that reruns it."""
        shard, replica = divmod(part, self.replicas)
        where = f"infer.shard={shard}" if self.num_shards > 1 else "this command"
        return where + (f", replica {replica}" if self.replicas > 1 else "")


def part_of(question_id: str, parts: int) -> int:
    """The part a question belongs to: a stable hash of its id (the same in every process and run)."""
    return int.from_bytes(hashlib.sha1(question_id.encode("utf-8")).digest()[:8], "big") % parts


def part_questions(questions: Sequence[Question], part: int, parts: int) -> list[Question]:
    """The questions of ``part``, in input order."""
    return [q for q in questions if part_of(q.id, parts) == part]


def part_path(out: Path, part: int, parts: int) -> Path:
    """Where part ``part`` of ``parts`` writes its predictions (its summary and log sit beside it)."""
    return Path(out) / PARTS_DIR / f"part-{part}-of-{parts}.jsonl"


def part_done(path: Path, questions: Sequence[Question]) -> bool:
    """True when ``path`` holds exactly these questions' records, in order (read-only)."""
    return [r["id"] for r in read_predictions(path, repair=False)] == [q.id for q in questions]


class UnfinishedParts(RuntimeError):
    """Some parts are missing or not finished: merging now would drop questions."""


def merge_parts(out: Path, questions: Sequence[Question], layout: ShardLayout) -> list[dict[str, Any]]:
    """Every part's records, in input order; refuses duplicates, foreign ids and unfinished parts.

    Reads only (a torn last line of a part still being written is ignored, not cut).
    """
    by_id: dict[str, dict[str, Any]] = {}
    unfinished = []
    for part in range(layout.parts):
        expected = [q.id for q in part_questions(questions, part, layout.parts)]
        path = part_path(out, part, layout.parts)
        records = read_predictions(path, repair=False)
        ids = [r["id"] for r in records]
        repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(f"{path} answers {len(repeated)} question(s) twice, e.g. {repeated[:3]}: "
                             "delete that part file and rerun its shard")
        foreign = sorted(set(ids) - set(expected))
        if foreign:
            raise ValueError(f"{path} holds {len(foreign)} question(s) that are not its share of this split, "
                             f"e.g. {foreign[:3]}: another split or layout wrote there; use a fresh out_dir")
        if ids != expected:
            state = ("missing" if not path.is_file() else f"{len(ids)} of {len(expected)} answered"
                     if len(ids) != len(expected) else "in another order than this split")
            unfinished.append(f"part {part} ({layout.owner(part)}): {state}")
        by_id.update((r["id"], r) for r in records)
    if unfinished:
        others = sorted(p.name for p in (Path(out) / PARTS_DIR).glob("part-*.jsonl")
                        if not p.name.endswith(f"-of-{layout.parts}.jsonl"))
        hint = f"; parts of another layout are there: {others[:4]}" if others else ""
        raise UnfinishedParts(f"cannot merge {out}: {len(unfinished)} of {layout.parts} parts unfinished: "
                              + "; ".join(unfinished) + " (a rerun resumes where each stopped)" + hint)
    return [by_id[q.id] for q in questions]


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (none on a CPU)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in value.split(",") if d.strip()] if value is not None else [str(i) for i in range(count)]
    return names[:count]


def replica_gpus(gpus: Sequence[str], replicas: int, per_replica: int | None = None) -> list[list[str]]:
    """Disjoint GPU slices, one per replica: ``per_replica`` each (None: an equal share of all); [] on a CPU."""
    if not gpus:
        return [[] for _ in range(replicas)]
    per = per_replica or len(gpus) // replicas
    if per < 1 or per * replicas > len(gpus):
        raise ValueError(f"infer.data_parallel_size={replicas} x {per_replica or 1} GPU(s) per replica needs "
                         f"{replicas * (per_replica or 1)} GPUs; {len(gpus)} visible ({','.join(gpus)})")
    return [list(gpus[i * per:(i + 1) * per]) for i in range(replicas)]


def replica_cpus(cpus: Sequence[int], replicas: int) -> list[list[int]]:
    """Disjoint core sets, one per replica (the CPU form: each engine computes on its own cores)."""
    if len(cpus) < replicas:
        raise ValueError(f"infer.data_parallel_size={replicas} on a CPU needs >= {replicas} cores; "
                         f"this process may use {len(cpus)}")
    per = len(cpus) // replicas
    return [sorted(cpus)[i * per:(i + 1) * per] for i in range(replicas)]


def replica_env(gpus: Sequence[str], cpus: Sequence[int], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one replica: pinned to ``gpus``, or on a CPU to ``cpus`` (threads and vLLM's binding)."""
    env = dict(os.environ if environ is None else environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        return env
    env["OMP_NUM_THREADS"] = str(len(cpus))
    env.pop("VLLM_CPU_OMP_THREADS_BIND", None)  # vllm_engine.cpu_env binds within this replica's cores
    return env


def replica_tensor_parallel(infer_cfg: Any) -> int | None:
    """GPUs per replica when the config fixes them (vLLM's ``tensor_parallel_size``), else None (equal share)."""
    value = cfg_get(infer_cfg, "tensor_parallel_size", "auto")
    return None if str(value) == "auto" else int(value)


def replica_start(cores: Sequence[int] | None) -> None:
    """In the forked replica before it runs: die with its job (no orphan left appending to a part that a
    rerun answers again) and, on a CPU, keep to its cores."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    if cores is not None:
        os.sched_setaffinity(0, cores)


def run_replicas(config: Path, out: Path, parts: Sequence[int], layout: ShardLayout,
                 infer_cfg: Any) -> None:
    """One ``patentqa.infer.replica CONFIG PART`` process per part, all at once, each on its own devices.

    Waits for all; raises naming the parts whose process failed (with their log's tail; finished
    parts stay on disk). Each replica records the devices it ran on in its part summary.
    """
    gpus = replica_gpus(visible_gpus(), len(parts), replica_tensor_parallel(infer_cfg))
    cpus = replica_cpus(sorted(os.sched_getaffinity(0)), len(parts)) if not gpus[0] else [[] for _ in parts]
    started = []
    for part, gpu_slice, cpu_slice in zip(parts, gpus, cpus):
        log_path = part_path(out, part, layout.parts).with_suffix(".log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "patentqa.infer.replica", str(config), str(part)], stdout=log,
                stderr=subprocess.STDOUT, env=replica_env(gpu_slice, cpu_slice),
                preexec_fn=lambda cores=tuple(cpu_slice): replica_start(cores or None))
        started.append((part, process, log_path))
    failed = []
    for part, process, log_path in started:
        if process.wait() != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            failed.append(f"part {part} exited {process.returncode} (log {log_path}):\n{tail}")
    if failed:
        raise RuntimeError(f"{len(failed)} replica(s) failed; finished parts are kept, a rerun resumes the rest\n"
                           + "\n".join(failed))
