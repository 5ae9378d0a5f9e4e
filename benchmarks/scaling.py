"""Benchmark 5: scaling — cold ``build_dataset`` time for 10, 40 and 160 synthetic patents.

Each size has its own corpus (generated once, 100-DPI scans to keep generation and rendering
short) and is built into a fresh cache dir. A least-squares line through (documents, seconds)
tells whether build time grows linearly: its R², the slope (seconds per extra document) and the
intercept (fixed start-up: model loads), and the time per document at each size.
"""
from __future__ import annotations

import numpy as np

from benchmarks.common import Clock, Figure, Ratio, Result, median, scratch, smoke_overrides

SIZES = (10, 40, 160)
QUICK_SIZES = (4, 8, 16)
# the tiny GME stand-in embeds each page at 64 image tokens instead of 256-1280: the embedding
# stage stays in the build and scales the same way, the run stays within minutes
EMBED_BUDGET = ("retrieval.min_pixels=3136", "retrieval.max_pixels=50176")


def fit(x: list[float], y: list[float]) -> dict[str, float]:
    """Least-squares y = a + b x; R², slope, intercept."""
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    slope, intercept = np.polyfit(xs, ys, 1)
    predicted = intercept + slope * xs
    ss_res = float(((ys - predicted) ** 2).sum())
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    return {"r2": 1 - ss_res / ss_tot if ss_tot else 1.0, "slope": float(slope), "intercept": float(intercept)}


def run(repeats: int, quick: bool = False) -> Result:
    """Cold builds of every size, ``repeats`` times each."""
    from patentqa.config import compose
    from patentqa.data.build import build_dataset, ensure_corpus

    sizes = QUICK_SIZES if quick else SIZES
    seconds: dict[int, list[float]] = {n: [] for n in sizes}
    pages: dict[int, int] = {}
    questions: dict[int, int] = {}
    with scratch("scaling-warmup") as cache:  # imports and first model loads, outside the timing
        cfg = compose(smoke_overrides(cache, f"data.synth.n_docs={sizes[0]}", *EMBED_BUDGET))
        ensure_corpus(cfg)
        build_dataset(cfg)
    for _ in range(repeats):
        for n in sizes:
            with scratch(f"scaling-{n}") as cache:
                cfg = compose(smoke_overrides(cache, f"data.synth.n_docs={n}", *EMBED_BUDGET))
                ensure_corpus(cfg)  # generated once per size, outside the timing
                with Clock() as clock:
                    build = build_dataset(cfg)
                seconds[n].append(clock.seconds)
                pages[n] = build.pages.rendered
                questions[n] = sum(len(qs) for qs in build.questions.values()) + len(build.unlabelled.questions)
    return _result(sizes, seconds, pages, questions, repeats)


def _result(sizes: tuple[int, ...], seconds: dict, pages: dict, questions: dict, repeats: int) -> Result:
    result = Result("scaling", "Scaling of the data stage (cold build_dataset vs corpus size)")
    result.setup = [
        f"input: synthetic corpora of {', '.join(map(str, sizes))} patents, seed 0, scanned at 100 DPI (not the "
        "realistic 300 DPI: keeps generation and rendering short); pages "
        + ", ".join(f"{pages[n]}" for n in sizes) + "; questions " + ", ".join(f"{questions[n]}" for n in sizes),
        "each size built cold (fresh paths.cache_dir) with +exp=smoke; the tiny GME stand-in embeds pages at 64 "
        "image tokens (retrieval.max_pixels=50176) instead of 256-1280 to keep the run short",
        f"repeats per size: {repeats}",
    ]
    for n in sizes:
        result.figures.append(Figure(f"{n} patents: cold build", "s", seconds[n]))
    for n in sizes:
        result.figures.append(Figure(f"{n} patents: seconds per patent", "s", [s / n for s in seconds[n]]))
    for n in sizes:
        result.figures.append(Figure(f"{n} patents: seconds per page", "s", [s / pages[n] for s in seconds[n]]))
    xs = [float(n) for n in sizes for _ in seconds[n]]
    ys = [s for n in sizes for s in seconds[n]]
    by_docs = fit(xs, ys)
    by_pages = fit([float(pages[n]) for n in sizes for _ in seconds[n]], ys)
    big, small = sizes[-1], sizes[0]
    growth = median(seconds[big]) / median(seconds[small])
    linear = by_docs["r2"] >= 0.98
    result.findings.append(
        f"linear fit time = {by_docs['intercept']:.1f} s + {by_docs['slope']:.2f} s x patents: R^2 = {by_docs['r2']:.4f}; "
        f"against pages: {by_pages['intercept']:.1f} s + {by_pages['slope'] * 1000:.0f} ms x pages, R^2 = {by_pages['r2']:.4f}")
    result.findings.append(
        f"{big / small:.0f}x the patents took {growth:.1f}x the time; seconds per patent "
        + " -> ".join(f"{median(seconds[n]) / n:.2f}" for n in sizes)
        + " (falls as the fixed start-up is shared by more patents)")
    result.ratios.append(Ratio(f"cold build time, {big} vs {small} patents ({big // small}x the input)",
                               [b / s for b, s in zip(seconds[big], seconds[small])], None, "info",
                               f"{median(seconds[small]):.1f} s ({small})", f"{median(seconds[big]):.1f} s ({big})",
                               note=f"linear fit R^2 = {by_docs['r2']:.4f}" + ("" if linear else " (NOT linear)")))
    result.findings.append(
        "verdict: " + ("grows linearly (R^2 >= 0.98, no super-linear term visible at these sizes)" if linear else
                       f"NOT clearly linear (R^2 = {by_docs['r2']:.3f} < 0.98): look at seconds per patent above"))
    return result
