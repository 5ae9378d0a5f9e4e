"""Shared pieces of the benchmarks: results, statistics, paths, the machine, timing.

Every benchmark returns a ``Result``: figures (one value per repeat, summarised as
min / median / max) and ratios of the seed's way against ours, each measured in the same
repeat on the same inputs, with the goal it is judged against.
"""
from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / ".cache" / "bench"   # generated inputs and trained checkpoints, cached between runs
TINY = REPO / ".cache" / "tiny"     # the tiny models (built by patentqa.tiny on first use)
DATA = BENCH / "data"               # synthetic corpora of the data-stage benchmarks


@dataclass
class Figure:
    """One measured quantity, one value per repeat."""

    label: str
    unit: str
    values: list[float]

    def stats(self) -> tuple[float, float, float]:
        return min(self.values), statistics.median(self.values), max(self.values)


@dataclass
class Ratio:
    """Seed vs ours, one value per repeat; ``kind`` says how the goal reads.

    speedup: ours is ``value`` times faster, goal met when median >= goal.
    fraction: ours uses ``value`` of the seed's amount, goal met when median <= goal.
    info: no goal (a reference figure).
    """

    label: str
    values: list[float]
    goal: float | None = None
    kind: str = "speedup"
    seed: str = ""   # the seed's figure, for the table (median with unit)
    ours: str = ""
    note: str = ""   # verdict text of an info ratio

    def median(self) -> float:
        return statistics.median(self.values)

    def met(self) -> bool | None:
        if self.goal is None or self.kind == "info":
            return None
        return self.median() >= self.goal if self.kind == "speedup" else self.median() <= self.goal

    def verdict(self) -> str:
        met = self.met()
        if met is None:
            return self.note or "(reference)"
        if self.kind == "speedup":
            if met:
                return f"met (goal >= {self.goal:g}x)"
            short = self.goal / self.median()
            return f"MISSED: {short:.2f}x short of {self.goal:g}x" if short < 1.1 else \
                f"MISSED: {short:.1f}x short of {self.goal:g}x"
        if met:
            return f"met (goal <= {fmt_pct(self.goal)})"
        return f"MISSED: {self.median() / self.goal:.1f}x over {fmt_pct(self.goal)}"

    def show(self) -> str:
        lo, mid, hi = min(self.values), self.median(), max(self.values)
        if self.kind == "fraction":
            return f"{fmt_pct(mid)} [{fmt_pct(lo)}-{fmt_pct(hi)}]"
        return f"{mid:.1f}x [{lo:.1f}-{hi:.1f}]"


@dataclass
class Result:
    """What one benchmark measured and what it means."""

    key: str
    title: str
    setup: list[str] = field(default_factory=list)      # inputs and settings, one line each
    figures: list[Figure] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)   # goal analysis, checks, caveats
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)               # 1-min load average before / after


def fmt_pct(x: float) -> str:
    return f"{100 * x:.3g}%" if x >= 1e-5 else f"{100 * x:.2g}%"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def median(values: list[float]) -> float:
    return statistics.median(values)


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (what a step left on disk)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A fresh directory under .cache/bench/tmp, removed afterwards."""
    root = BENCH / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Clock:
    """``with Clock() as c: ...`` then ``c.seconds``."""

    def __enter__(self) -> Clock:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def load1() -> float:
    return os.getloadavg()[0]


def smoke_overrides(cache_dir: Path, *extra: str) -> list[str]:
    """``+exp=smoke`` with benchmark-owned cache and data dirs and the shared tiny models."""
    return ["+exp=smoke", f"paths.cache_dir={cache_dir}", f"paths.data_dir={DATA}",
            f"model.path={TINY / 'qwen2_5_vl'}", f"model.embedder_path={TINY / 'qwen2_vl_gme'}",
            "logger=none", *extra]


def machine() -> dict[str, str]:
    """Cores, memory, CPU model, versions: what the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 ** 2:.1f} GiB"
                break
    except OSError:
        pass
    info = {"cores": str(os.cpu_count()), "memory": mem, "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "omp": os.environ.get("OMP_NUM_THREADS", "unset")}
    try:
        import torch

        info["torch"] = f"{torch.__version__} ({torch.get_num_threads()} intra-op threads)"
    except ImportError:
        pass
    return info
