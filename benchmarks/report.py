"""RESULTS.md and the ratio table printed at the end of a run."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import Figure, Ratio, Result, fmt_bytes

NUMBERED = {"render": "1", "pipeline": "2", "pipeline_vllm": "2b", "sweep": "3", "rebuild": "4", "scaling": "5", "estimate": "6", "ocr": "7", "browse": "8"}


def fmt_value(value: float, unit: str) -> str:
    if unit == "B":
        return fmt_bytes(value)
    if unit == "s":
        return f"{value:.3f}" if value < 1 else f"{value:.1f}" if value >= 100 else f"{value:.2f}"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def figure_row(figure: Figure) -> str:
    lo, mid, hi = figure.stats()
    unit = "" if figure.unit == "B" else f" {figure.unit}"
    return (f"| {figure.label} | {fmt_value(lo, figure.unit)}{unit} | **{fmt_value(mid, figure.unit)}{unit}** | "
            f"{fmt_value(hi, figure.unit)}{unit} |")


def ratio_rows(results: list[Result]) -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    for result in results:
        for ratio in result.ratios:
            goal = "-" if ratio.goal is None else (f">= {ratio.goal:g}x" if ratio.kind == "speedup"
                                                   else f"<= {100 * ratio.goal:g}%")
            rows.append((f"{NUMBERED.get(result.key, '')} {result.key}", ratio.label, ratio.seed, ratio.ours,
                         ratio.show(), goal, ratio.verdict()))
    return rows


def ratio_table_text(results: list[Result]) -> str:
    """Fixed-width table for the terminal."""
    header = ("benchmark", "comparison", "seed", "ours", "ratio median [min-max]", "goal", "verdict")
    rows = [header] + ratio_rows(results)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def ratio_table_md(results: list[Result]) -> str:
    lines = ["| benchmark | comparison | seed | ours | ratio, median [min-max] | goal | verdict |",
             "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in ratio_rows(results)]
    return "\n".join(lines)


def ratios_json(results: list[Result], date: str) -> dict:
    """The ratios of a run, machine-readable: {"date", "ratios": {"<key>: <label>": [values per repeat]}}."""
    return {"date": date, "ratios": {f"{r.key}: {ratio.label}": ratio.values for r in results for ratio in r.ratios}}


def load_previous(path: Path) -> dict | None:
    """The ratios of the run that last wrote ``path`` (its .json twin), if any."""
    try:
        return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def reproducibility_md(results: list[Result], previous: dict) -> list[str]:
    """This run's ratios against the previous run's: does each median fall inside the other's range?"""
    rows = []
    for result in results:
        for ratio in result.ratios:
            old = previous["ratios"].get(f"{result.key}: {ratio.label}")
            if not old:
                continue
            before = Ratio(ratio.label, old, kind=ratio.kind)
            lo, hi = min(old), max(old)
            inside = lo <= ratio.median() <= hi
            shift = ratio.median() / before.median() if before.median() else float("nan")
            rows.append(f"| {NUMBERED.get(result.key, '')} {ratio.label} | {before.show()} | {ratio.show()} | "
                        f"{shift:.2f} | {'yes' if inside else 'no'} |")
    if not rows:
        return []
    return [f"## Reproducibility: this run vs the previous one ({previous.get('date', '?')})", "",
            "Each ratio's median in this run against the min-max range the previous run reported (same runner, "
            "same inputs). `shift` is this median / the previous median.", "",
            "| comparison | previous run | this run | shift | this median inside the previous range |",
            "|---|---|---|---|---|", *rows, ""]


def write_results(path: Path, results: list[Result], info: dict[str, str], command: str, repeats: int,
                  quick: bool, total_s: float, failures: list[str], previous: dict | None = None) -> None:
    """Rewrite ``path`` (and its .json twin) with everything measured in this run."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmarks: the seed's way vs ours",
        "",
        "Written by `python -m benchmarks` (`make bench`); every figure below comes from the run described here. "
        "Each benchmark runs the seed's way and ours on the same inputs in the same process and repeat; ratios "
        "are taken per repeat, then summarised as median [min-max].",
        "",
        f"- date: {now}",
        f"- machine: {info['cores']} cores, {info['memory']} RAM, {info['cpu']}; {info['platform']}; "
        f"Python {info['python']}; torch {info.get('torch', '?')}; OMP_NUM_THREADS="
        f"{info.get('omp', 'unset')} (the same for both sides)",
        f"- command: `{command}`" + (" (quick pass: fewer inputs, not the reference figures)" if quick else ""),
        f"- repeats: {repeats} (min / median / max over them); whole run {total_s / 60:.1f} min",
        "- load: this machine is shared with other sessions; the 1-minute load average before/after each "
        "benchmark is listed with it. A load above the core count means other processes took CPU during the "
        "measurement. Both sides run with the same thread settings (one OpenMP/torch thread per process by "
        "default), so they slow alike; with two threads per process a busy neighbour made the tiny model's small "
        "ops up to 6x slower and the seed's flow (many small calls) suffered most, inflating our ratios.",
        "",
        "## Summary",
        "",
        ratio_table_md(results),
        "",
    ]
    if failures:
        out += ["**Failures:**", ""] + [f"- {f}" for f in failures] + [""]
    for result in results:
        number = NUMBERED.get(result.key, "")
        out += [f"## {number}. {result.title}", "",
                f"_{result.seconds:.0f} s; load average {result.load[0]:.1f} before, {result.load[1]:.1f} after_", ""]
        out += [f"- {line}" for line in result.setup] + [""]
        if result.figures:
            out += ["| figure | min | median | max |", "|---|---|---|---|"]
            out += [figure_row(f) for f in result.figures] + [""]
        if result.ratios:
            out += ["| comparison | seed | ours | ratio, median [min-max] | goal | verdict |", "|---|---|---|---|---|---|"]
            out += ["| " + " | ".join(row[1:]) + " |" for row in ratio_rows([result])]
            out.append("")
        for finding in result.findings:
            out += ([finding, ""] if finding.startswith("|") else [f"- {finding}", ""])
    if previous:
        out += reproducibility_md(results, previous)
    path.write_text("\n".join(out).rstrip() + "\n", encoding="utf-8")
    path.with_suffix(".json").write_text(json.dumps(ratios_json(results, now), indent=1) + "\n", encoding="utf-8")
