"""Benchmark 7: the OCR layer — pages/s in one process and in the pool, and what it adds to a build.

Input: a synthetic set of 300-DPI scans (the real patents' resolution), made once under
.cache/bench/data. OCR alone: every page read into a fresh cache with one worker, then with the
pool (one worker per CPU). Builds: ``+exp=smoke`` on that set with ``data.ocr.enabled`` false
and true, each cold (fresh cache: render, embed, OCR, rows) and warm (the same call again); the
warm build with OCR must stay >= 20x faster than the cold one, as the rebuild benchmark asks of
every build. The seed had no OCR layer, so the OCR figures are ours alone.
"""
from __future__ import annotations

import os

from benchmarks.common import DATA, TINY, Clock, Figure, Ratio, Result, median, scratch

GOAL = 20.0
SPEC = {"n_docs": 6, "seed": 3, "scan_dpi": 300}


def dataset():
    from patentqa.data.synth.patents import SynthSpec, generate

    out = DATA / "ocr-n{n_docs}-s{seed}-dpi{scan_dpi}".format(**SPEC)
    if not (out / "synth.json").is_file():
        generate(out, SynthSpec(**SPEC))
    return out


def config(data, cache, ocr: bool):
    from patentqa.config import compose

    return compose(["+exp=smoke", f"data.dir={data}", "data.synth=null", f"paths.cache_dir={cache}",
                    f"model.path={TINY / 'qwen2_5_vl'}", f"model.embedder_path={TINY / 'qwen2_vl_gme'}",
                    "logger=none", f"data.ocr.enabled={str(ocr).lower()}"])


def run(repeats: int, quick: bool = False) -> Result:
    from patentqa.data.build import build_dataset
    from patentqa.data.corpus import read_split
    from patentqa.data.ocr.reader import OcrSpec, ocr_documents

    data = dataset()
    documents = sorted({**read_split(data, "train").documents,
                        **read_split(data, "test", require_answer=False).documents}.values(), key=lambda d: d.name)
    timed = documents[:2 if quick else 3]  # pages/s: three patents suffice; the builds read all of them
    pages = sum(d.page_count for d in timed)
    workers = os.cpu_count() or 1
    rates: dict[str, list[float]] = {"one": [], "pool": []}
    builds: dict[str, list[float]] = {k: [] for k in ("cold", "warm", "cold_ocr", "warm_ocr")}
    for _ in range(repeats):
        for name, count in (("one", 1), ("pool", workers)):
            with scratch(f"ocr-{name}") as cache:
                result = ocr_documents(timed, cache, OcrSpec(), workers=count, progress=False)
                rates[name].append(result.read / result.seconds)
        if quick:
            continue
        for ocr in (False, True):
            with scratch("ocr-build") as cache:
                cfg = config(data, cache, ocr)
                with Clock() as cold:
                    build_dataset(cfg)
                with Clock() as warm:
                    build_dataset(cfg)
            builds["cold_ocr" if ocr else "cold"].append(cold.seconds)
            builds["warm_ocr" if ocr else "warm"].append(warm.seconds)
    out = Result("ocr", "OCR layer (PP-OCRv4 on CPU): pages/s and its share of a build")
    out.setup = [f"input: {len(timed)} of {len(documents)} synthetic patents scanned at 300 DPI ({pages} pages), OCR at "
                 f"{OcrSpec.dpi} DPI, one ONNX thread per process; pool = {workers} processes",
                 "builds: +exp=smoke on that set (tiny GME stand-in), data.ocr.enabled=false and true, each into a "
                 "fresh cache (cold) and again (warm)"]
    for name, label in (("one", "OCR, 1 process"), ("pool", f"OCR, pool of {workers}")):
        out.figures.append(Figure(f"{label}: pages/s", "pages/s", rates[name]))
    out.ratios.append(Ratio(f"OCR pages/s, pool of {workers} vs 1 process",
                            [p / o for p, o in zip(rates["pool"], rates["one"])], None, "info",
                            f"{median(rates['one']):.2f} pages/s", f"{median(rates['pool']):.2f} pages/s",
                            "scaling over processes"))
    if not quick:
        for name, label in (("cold", "cold build, no OCR"), ("warm", "warm build, no OCR"),
                            ("cold_ocr", "cold build with OCR"), ("warm_ocr", "warm build with OCR")):
            out.figures.append(Figure(label, "s", builds[name]))
        out.ratios.append(Ratio("cold build with OCR vs without (what OCR adds)",
                                [w / o for w, o in zip(builds["cold_ocr"], builds["cold"])], None, "info",
                                f"{median(builds['cold']):.1f} s", f"{median(builds['cold_ocr']):.1f} s",
                                "time of a cold build with OCR / without"))
        out.ratios.append(Ratio("build with OCR, warm vs cold", [c / w for c, w in zip(builds["cold_ocr"],
                                                                                    builds["warm_ocr"])],
                                GOAL, "speedup", f"{median(builds['cold_ocr']):.1f} s",
                                f"{median(builds['warm_ocr']):.2f} s"))
        out.findings.append(f"warm with OCR costs {median(builds['warm_ocr']) - median(builds['warm']):+.2f} s over warm "
                            "without: reading the cached layers (one JSON per page)")
    return out
