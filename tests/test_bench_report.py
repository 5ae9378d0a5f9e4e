"""The benchmark report: each run keeps its ratios and says how well it reproduces the last run."""
from __future__ import annotations

from pathlib import Path

from benchmarks.common import Ratio, Result
from benchmarks.report import load_previous, write_results

INFO = {"cores": "2", "memory": "1 GiB", "cpu": "x", "platform": "p", "python": "3", "omp": "1"}


def run(values: list[float]) -> list[Result]:
    result = Result("render", "Page rendering")
    result.ratios.append(Ratio("pages/s, ours vs seed", values, 40.0, "speedup", "1 pages/s", "40 pages/s"))
    return [result]


def test_a_rerun_is_compared_with_the_previous_run(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    assert load_previous(path) is None
    write_results(path, run([38.0, 41.0, 44.0]), INFO, "python -m benchmarks", 3, False, 60.0, [])
    assert "Reproducibility" not in path.read_text()
    first = load_previous(path)
    assert first["ratios"] == {"render: pages/s, ours vs seed": [38.0, 41.0, 44.0]}

    write_results(path, run([42.0, 43.0, 45.0]), INFO, "python -m benchmarks", 3, False, 60.0, [], first)
    rows = [line for line in path.read_text().splitlines() if line.startswith("| 1 pages/s")]
    assert rows == ["| 1 pages/s, ours vs seed | 41.0x [38.0-44.0] | 43.0x [42.0-45.0] | 1.05 | yes |"]

    write_results(path, run([30.0, 31.0, 32.0]), INFO, "python -m benchmarks", 3, False, 60.0, [], first)
    assert "| 0.76 | no |" in path.read_text()
