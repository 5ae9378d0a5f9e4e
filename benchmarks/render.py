"""Benchmark 1: page rendering — the seed's 600-DPI JPEGs vs ``render_documents`` at the model's size.

Seed (its write-up, section 3.1): ``page.get_pixmap(dpi=600)`` then ``pix.save(N.jpg)``, one
process, every page of every PDF. Ours: ``render_documents`` into a cold cache dir at the
seed_b figure-only budget (2,352,000 pixels), default workers (one per CPU).

Inputs: 20 synthetic patents scanned at 300 DPI (``SynthSpec(scan_dpi=300)``), generated once
into .cache/bench/. The seed renders a disjoint sample of pages in each repeat (its cost per
page is flat, ~1.5 s, so sampling keeps the run short; ``seed_pages=0`` renders every page);
ours renders every page in every repeat. Then the proof the model sees the same thing: both
files of sampled pages go through qwen-vl-utils ``fetch_image`` at the same budget.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import BENCH, Clock, Figure, Ratio, Result, dir_bytes, fmt_bytes, median, scratch

BUDGET = 2_352_000  # seed_b figure_only: the largest per-image budget any prompt uses
CONTEXT_BUDGET = 1_568_000  # seed_b with_context (the 1.57 MP reference): under half the scan's width
MIN_PIXELS = 3136
GOAL = 40.0


def corpus(n_docs: int = 20, scan_dpi: int = 300) -> Path:
    """The synthetic set (generated on first use, then reused)."""
    from patentqa.data.synth.patents import SynthSpec, generate

    out = BENCH / f"render-n{n_docs}-dpi{scan_dpi}"
    if not (out / "synth.json").is_file():
        generate(out, SynthSpec(n_docs=n_docs, seed=0, scan_dpi=scan_dpi))
    return out


def documents(root: Path, n_docs: int) -> list:
    """``Document`` records (path, sha256, pages) of the first ``n_docs`` PDFs, by name."""
    from patentqa.data.corpus import inspect_pdf

    pdfs = sorted(root.glob("*/documents/*.pdf"), key=lambda p: p.name)[:n_docs]
    return [inspect_pdf(p) for p in pdfs]


def seed_render(jobs: list[tuple[Path, list[int]]], out_dir: Path) -> dict[str, float]:
    """The seed's loop, verbatim in effect: 600 DPI pixmap → ``pix.save(.jpg)``, one process."""
    import pymupdf as fitz

    pixmap_s = save_s = 0.0
    pages = 0
    for pdf, indices in jobs:
        pdf_document = fitz.open(pdf)
        folder = out_dir / pdf.stem
        folder.mkdir(parents=True, exist_ok=True)
        for i in indices:
            page = pdf_document.load_page(i)
            tick = time.perf_counter()
            pix = page.get_pixmap(dpi=600)
            tock = time.perf_counter()
            pix.save(str(folder / f"{i + 1}.jpg"))
            pixmap_s += tock - tick
            save_s += time.perf_counter() - tock
            pages += 1
        pdf_document.close()
    return {"pages": pages, "pixmap_s": pixmap_s, "save_s": save_s}


def seed_sample(docs: list, repeat: int, per_repeat: int) -> list[tuple[Path, list[int]]]:
    """Pages the seed renders in ``repeat``: a strided slice, disjoint between repeats."""
    every = [(d.path, i) for d in docs for i in range(d.page_count)]
    if per_repeat <= 0 or per_repeat >= len(every):
        chosen = every
    else:
        stride = len(every) / per_repeat
        offset = (repeat * 0.37 * stride) % stride  # shift the slice each repeat
        chosen = [every[int(offset + k * stride) % len(every)] for k in range(per_repeat)]
    jobs: dict[Path, list[int]] = {}
    for path, index in chosen:
        jobs.setdefault(path, []).append(index)
    return list(jobs.items())


def profile_ours(docs: list, spec, n: int = 3) -> dict[str, float]:
    """One process, every page of ``n`` documents: mean seconds to rasterise (scan decode + scale)
    and to JPEG-encode a page, with MuPDF's store emptied before each page."""
    import pymupdf

    from patentqa.data.pages import encode_page, render_page, target_size

    raster, encode = [], []
    for document in docs[:n]:
        with pymupdf.open(document.path) as pdf:
            for index in range(document.page_count):
                page = pdf.load_page(index)
                size = target_size(page.rect.width, page.rect.height, spec)
                pymupdf.TOOLS.store_shrink(100)  # no decoded scan left over from an earlier render
                tick = time.perf_counter()
                pixmap = render_page(page, size, spec)
                tock = time.perf_counter()
                encode_page(pixmap, spec)
                raster.append(tock - tick)
                encode.append(time.perf_counter() - tock)
    return {"raster_s": sum(raster) / len(raster), "encode_s": sum(encode) / len(encode), "pages": len(raster)}


def fidelity(seed_dir: Path, ours: dict, jobs: list[tuple[Path, list[int]]], k: int) -> dict[str, float]:
    """Both files of ``k`` pages through ``fetch_image`` at the same budget: grids and pixel difference."""
    from qwen_vl_utils import fetch_image

    pairs = [(seed_dir / pdf.stem / f"{i + 1}.jpg", ours[(pdf.name, i + 1)]) for pdf, idx in jobs for i in idx]
    pairs = pairs[:: max(1, len(pairs) // k)][:k]
    same_grid, diffs, load_seed, load_ours = 0, [], [], []
    for seed_file, our_file in pairs:
        images = []
        for path, times in ((seed_file, load_seed), (our_file, load_ours)):
            tick = time.perf_counter()
            image = fetch_image({"image": str(path), "max_pixels": BUDGET, "min_pixels": MIN_PIXELS},
                                image_patch_size=14)
            times.append(time.perf_counter() - tick)
            images.append(np.asarray(image.convert("RGB"), dtype=np.int16))
        if images[0].shape == images[1].shape:
            same_grid += 1
            diffs.append(float(np.abs(images[0] - images[1]).mean()))
    return {"pages": len(pairs), "same_grid": same_grid, "mad": float(np.mean(diffs)) if diffs else float("nan"),
            "mad_max": max(diffs) if diffs else float("nan"), "grid": list(images[1].shape[:2]) if pairs else [],
            "load_seed_s": median(load_seed) if load_seed else 0.0, "load_ours_s": median(load_ours) if load_ours else 0.0}


def run(repeats: int, quick: bool = False, seed_pages: int = 16) -> Result:
    """Render the set ``repeats`` times each way; pages/s, bytes, and the fidelity check."""
    from patentqa.data.pages import RenderSpec, render_documents

    n_docs = 4 if quick else 20
    seed_pages = 4 if quick else seed_pages
    root = corpus()
    docs = documents(root, n_docs)
    total_pages = sum(d.page_count for d in docs)
    specs = {"rgb": RenderSpec(max_pixels=BUDGET, min_pixels=MIN_PIXELS),
             "gray": RenderSpec(max_pixels=BUDGET, min_pixels=MIN_PIXELS, colorspace="gray"),
             "rgb_context": RenderSpec(max_pixels=CONTEXT_BUDGET, min_pixels=MIN_PIXELS)}
    rates: dict[str, list[float]] = {"seed": [], **{name: [] for name in specs}}
    per_page_bytes: dict[str, list[float]] = {"seed": [], **{name: [] for name in specs}}
    split = {"pixmap_s": 0.0, "save_s": 0.0, "pages": 0}
    checks: dict[str, dict[str, float]] = {}
    import qwen_vl_utils.vision_process  # noqa: F401  one-time import (pulls in torch), untimed like the seed's pymupdf
    for repeat in range(repeats):
        with scratch("render-seed") as seed_dir:
            jobs = seed_sample(docs, repeat, seed_pages)
            with Clock() as clock:
                parts = seed_render(jobs, seed_dir)
            rates["seed"].append(parts["pages"] / clock.seconds)
            per_page_bytes["seed"].append(dir_bytes(seed_dir) / parts["pages"])
            for key in split:
                split[key] += parts[key]
            for name, spec in specs.items():
                with scratch(f"render-{name}") as cache:
                    with Clock() as clock:  # hashing the PDFs (the cache key) counts as ours
                        fresh = documents(root, n_docs)
                        result = render_documents(fresh, cache, spec, progress=False)
                    assert result.rendered == total_pages and not result.problems, result.problems
                    rates[name].append(result.rendered / clock.seconds)
                    per_page_bytes[name].append(dir_bytes(cache) / result.rendered)
                    if repeat == 0 and name != "rgb_context":
                        checks[name] = fidelity(seed_dir, result.paths, jobs, k=4 if quick else 8)
    profile = {name: profile_ours(docs, spec) for name, spec in specs.items()}
    return _result(rates, per_page_bytes, split, checks, profile, docs, total_pages, seed_pages, root)


def _result(rates: dict, per_page_bytes: dict, split: dict, checks: dict, profile: dict, docs: list,
            total_pages: int, seed_pages: int, root: Path) -> Result:
    import os

    seed_sampled = split["pages"]
    result = Result("render", "Page rendering (PDF -> page images)")
    result.setup = [
        f"input: {len(docs)} synthetic patents, {total_pages} pages, A4 scans at 300 DPI grayscale JPEG "
        f"({root.relative_to(BENCH.parents[1])})",
        f"seed: PyMuPDF `page.get_pixmap(dpi=600)` -> `pix.save(N.jpg)`, one process; "
        + (f"{seed_pages} pages per repeat, a different strided sample each repeat ({seed_sampled} pages timed in all)"
           if 0 < seed_pages < total_pages else "every page each repeat"),
        f"ours: `render_documents` into a cold cache dir, RenderSpec(max_pixels={BUDGET}, rgb, no ICC colour "
        "management, JPEG q90 via Pillow), "
        f"workers=default ({os.cpu_count()} processes); every page each repeat; PDF hashing included "
        "(module imports are done before timing, on both sides)",
        "also shown: ours with colorspace=gray (data.pages.colorspace=gray), the same pages in one channel; and "
        f"ours at the with-context budget (max_pixels={CONTEXT_BUDGET}, the 1.57 MP of the issue's reference "
        "figure), which a render pass would use if no prompt asked for more",
    ]
    names = {"seed": "seed (600 DPI JPEG)", "rgb": "ours (budget, rgb)", "gray": "ours (budget, gray)",
             "rgb_context": "ours (1.57 MP, rgb)"}
    for key, label in names.items():
        result.figures.append(Figure(f"{label}: pages/s", "pages/s", rates[key]))
    for key, label in names.items():
        result.figures.append(Figure(f"{label}: bytes per page", "B", per_page_bytes[key]))
    sampled = 0 < seed_pages < total_pages
    for key, label in names.items():
        how = " (seed: bytes/page of its sample x pages)" if key == "seed" and sampled else ""
        result.figures.append(Figure(f"{label}: bytes for all {total_pages} pages{how}", "B",
                                     [b * total_pages for b in per_page_bytes[key]]))
    speed = [o / s for o, s in zip(rates["rgb"], rates["seed"])]
    seed_rate, our_rate = median(rates["seed"]), median(rates["rgb"])
    result.ratios.append(Ratio("pages/s, ours (rgb) vs seed", speed, GOAL, "speedup",
                               f"{seed_rate:.2f} pages/s", f"{our_rate:.1f} pages/s"))
    result.ratios.append(Ratio("pages/s, ours (gray) vs seed", [o / s for o, s in zip(rates["gray"], rates["seed"])],
                               GOAL, "speedup", f"{seed_rate:.2f} pages/s", f"{median(rates['gray']):.1f} pages/s"))
    result.ratios.append(Ratio("pages/s, ours (rgb) at 1.57 MP vs seed",
                               [o / s for o, s in zip(rates["rgb_context"], rates["seed"])], GOAL, "speedup",
                               f"{seed_rate:.2f} pages/s", f"{median(rates['rgb_context']):.1f} pages/s"))
    result.ratios.append(Ratio("bytes on disk, ours (rgb) / seed",
                               [o / s for o, s in zip(per_page_bytes["rgb"], per_page_bytes["seed"])], None, "fraction",
                               fmt_bytes(median(per_page_bytes["seed"]) * total_pages),
                               fmt_bytes(median(per_page_bytes["rgb"]) * total_pages)))
    rgb, gray = checks.get("rgb", {}), checks.get("gray", {})
    if rgb:
        result.findings.append(
            f"same input to the model: {rgb['same_grid']}/{rgb['pages']} sampled pages give the identical "
            f"(h, w) = {tuple(rgb['grid'])} grid from both files through `fetch_image(max_pixels={BUDGET})`; mean "
            f"absolute pixel difference {rgb['mad']:.2f} of 255 (worst page {rgb['mad_max']:.2f}) for rgb, "
            f"{gray.get('mad', float('nan')):.2f} for gray (small: resampling filters and JPEG noise differ)")
        result.findings.append(
            f"inference-time image load (`fetch_image`, median per image): seed's 600-DPI file "
            f"{rgb['load_seed_s'] * 1000:.0f} ms vs ours {rgb['load_ours_s'] * 1000:.0f} ms "
            f"({rgb['load_seed_s'] / max(rgb['load_ours_s'], 1e-9):.0f}x) - the seed pays this again for every "
            "image of every prompt it answers")
    pixmap_s, save_s = split["pixmap_s"] / max(seed_sampled, 1), split["save_s"] / max(seed_sampled, 1)
    result.findings.append(
        f"seed per page (mean over its {seed_sampled} timed pages): {pixmap_s:.2f} s rasterising 4959x7017 RGB + "
        f"{save_s:.2f} s JPEG-encoding those 35 Mpx = {pixmap_s + save_s:.2f} s; ours {1 / our_rate:.3f} s of wall time "
        f"per page with {os.cpu_count()} processes")
    rgb_p, gray_p, ctx_p = profile["rgb"], profile["gray"], profile["rgb_context"]
    result.findings.append(
        f"ours per page, one process (mean over every page of {min(3, len(docs))} documents, {rgb_p['pages']} "
        "pages): rasterise "
        f"{rgb_p['raster_s']:.3f} s (decoding the whole 2480x3508 scan JPEG, then scaling it down) + JPEG-encode "
        f"{rgb_p['encode_s']:.3f} s for rgb; {gray_p['raster_s']:.3f} s + {gray_p['encode_s']:.3f} s for gray; "
        f"{ctx_p['raster_s']:.3f} s + {ctx_p['encode_s']:.3f} s at 1.57 MP, where the target is under half the "
        "scan's width and MuPDF decodes the JPEG at 1/2 scale")
    ratio = median(speed)
    if ratio < GOAL * 1.1:  # missed, or met by less than 10%: say where the ceiling is
        cpu = rgb_p["raster_s"] + rgb_p["encode_s"]
        per_core = (pixmap_s + save_s) / cpu
        verdict = (f"goal {GOAL:g}x missed ({ratio:.1f}x, {GOAL / ratio:.2f}x short)" if ratio < GOAL else
                   f"goal {GOAL:g}x met by {100 * (ratio / GOAL - 1):.0f}% only ({ratio:.1f}x): a rerun can land on "
                   "either side (see Reproducibility)")
        result.findings.append(
            f"{verdict}. With realistic 300-DPI scans one of our pages costs ~{cpu:.3f} s of CPU (the whole scan "
            f"JPEG is decoded before it is scaled down, then an RGB JPEG is encoded), so one core gives at most "
            f"~{per_core:.0f}x over the seed's {pixmap_s + save_s:.2f} s, and {os.cpu_count()} cores at most "
            f"~{per_core * (os.cpu_count() or 1):.0f}x; process start-up, PDF hashing, the last document's tail and "
            "other sessions' load on this shared machine take the rest. The 40x goal assumed ~0.024 s per page, "
            "which this input allows only below half the scan's width: at the 1.57 MP with-context budget ours "
            f"reaches {median([o / s for o, s in zip(rates['rgb_context'], rates['seed'])]):.0f}x, but the renderer "
            "draws each page once at the largest budget any prompt uses (2.35 MP, figure-only prompts, for small "
            "part numbers), so that is the figure judged. Gray pages (one channel; the model sees R=G=B either way) "
            f"reach {median([o / s for o, s in zip(rates['gray'], rates['seed'])]):.0f}x. The pool has one worker per "
            f"CPU, so on a 16-core node the rgb figure can grow up to ~8x (to ~{ratio * 8:.0f}x) while the seed's "
            "single process stays where it is")
    return result
