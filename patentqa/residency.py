"""One big model per process at a time: every load and release of a model-holding object is recorded.

A 32B model spread over every GPU of a node leaves no room for a second one: vLLM refuses to
start when a GPU's free memory is below ``gpu_memory_utilization``, and a GME embedder left on
cuda:0 takes ~16 GB from whatever runs next. So each object that holds model weights in this
process (the transformers and vLLM engines, the GME embedder, a ``swift sft`` run the process
waits on) takes a ``Hold`` before it loads and releases it when it is done:

    with residency.loading("vllm", model_path) as held:   # raises ResidencyError if another is alive
        llm = vllm.LLM(...)                               # a failed load releases the hold
    ...
    llm = None
    held.release()                                        # gc.collect() + torch.cuda.empty_cache()

Taking a hold while another is alive raises ``ResidencyError`` naming both. Engines without
local weights (the OpenAI client) take none. A hold is also released when its owner is garbage
collected (``Hold.bind``), so an engine nobody references any more does not block the next one.

With ``PATENTQA_RESIDENCY_LOG=FILE`` every load and release is appended to FILE as one JSON line
``{"event": "load"|"release", "kind", "name", "pid", "alive": [...], "time"}`` (``alive``: the
process's models after the event), so a test can check the record across subprocesses.

This module imports nothing of patentqa, so every stage may use it.
"""
from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

LOG_ENV = "PATENTQA_RESIDENCY_LOG"

_lock = threading.RLock()
_alive: dict[int, Hold] = {}  # hold id -> hold, in load order
_ids = itertools.count(1)


class ResidencyError(RuntimeError):
    """A second model was about to load while another is alive in this process."""


@dataclass(eq=False)
class Hold:
    """One loaded model: what kind (engine, embedder) and which weights."""

    kind: str
    name: str
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def alive(self) -> bool:
        return self.id in _alive

    def release(self) -> None:
        """Forget this model (idempotent) and free memory: call after dropping the last reference."""
        with _lock:
            if _alive.pop(self.id, None) is None:
                return
            free_memory()
            _record("release", self)

    def bind(self, owner: Any) -> Hold:
        """Release this hold when ``owner`` is garbage collected (an engine nobody closed)."""
        weakref.finalize(owner, self.release)
        return self


def alive() -> list[str]:
    """``kind:name`` of every model alive in this process, in load order."""
    with _lock:
        return [held.label for held in _alive.values()]


def hold(kind: str, name: str) -> Hold:
    """Take the process's model slot for ``kind`` ``name``; raise ``ResidencyError`` while another holds it."""
    with _lock:
        if _alive:
            others = ", ".join(alive())
            raise ResidencyError(
                f"cannot load {kind} {name}: {others} is still loaded in this process (one big model per device "
                f"at a time: close it, or use it in a `with` block, before loading another)")
        held = Hold(kind, str(name))
        _alive[held.id] = held
        _record("load", held)
        return held


@contextlib.contextmanager
def loading(kind: str, name: str) -> Iterator[Hold]:
    """``hold(kind, name)`` around a load; the hold is released if the load raises."""
    held = hold(kind, name)
    try:
        yield held
    except BaseException:
        held.release()
        raise


@contextlib.contextmanager
def holding(kind: str, name: str) -> Iterator[Hold]:
    """A hold for the duration of a block (e.g. a training subprocess this process waits on)."""
    held = hold(kind, name)
    try:
        yield held
    finally:
        held.release()


def free_memory() -> None:
    """``gc.collect()``, then ``torch.cuda.empty_cache()`` when torch is loaded and CUDA initialised."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _record(event: str, held: Hold) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = json.dumps({"event": event, "kind": held.kind, "name": held.name, "pid": os.getpid(),
                       "alive": alive(), "time": time.time()}, ensure_ascii=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as log:  # one short write per line: safe across processes
        log.write(line + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The events of a residency log, in file order."""
    text = Path(path).read_text(encoding="utf-8")  # split at \n only: str.splitlines() splits inside strings too
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def overlaps(events: list[dict[str, Any]], across_processes: bool = False) -> list[str]:
    """Moments two models were alive at once in one process (``across_processes``: in any two of the
    log's processes, for runs where they share the devices); empty when never."""
    live: dict[tuple[int, str], int] = {}
    problems = []
    for event in sorted(events, key=lambda e: e["time"]):
        key = (event["pid"], f"{event['kind']}:{event['name']}")
        if event["event"] == "load":
            others = sorted(f"{label} (pid {pid})" for pid, label in live
                            if across_processes or pid == event["pid"])
            if others:
                problems.append(f"{key[1]} (pid {key[0]}) loaded while {', '.join(others)} alive")
            live[key] = live.get(key, 0) + 1
        elif live.get(key):
            live[key] -= 1
            if not live[key]:
                del live[key]
    return problems
