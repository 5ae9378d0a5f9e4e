"""Benchmark 8: the question browser — time and bytes of a browse of 500 questions, and what 3,500 would take.

Input: the render benchmark's synthetic patents (300-DPI scans, made once under .cache/bench/), their pages
rendered into a page cache at the 32B recipe's budgets (``+exp=lora_r8``: 2.35 MP a page, ~250 KB), and two run
dirs as a sweep leaves them (the recipe's resolved config, ``eval/{dev,test}/checkpoint-N/`` scored by the real
``score_file``) answering the same 500 questions drawn over those pages: a third figure-only (the asked page),
a third with context (asked + 2 retrieved), a third whole-patent (2 retrieved). Nothing of this is timed.

Timed: ``python -m patentqa.eval.browse`` as a new process with the thumbnail cache empty (every shown page gets
its thumbnail), and ``build_browse`` in-process, cold (cache emptied) and warm (thumbnails from the cache). Bytes: the
site's own (index.html and thumbnails) and the full pages, hard links of the cached files (no new bytes on the
cache's filesystem; a copy elsewhere). The seed had no browser: every figure is ours alone; the 3,500-question
rows extrapolate from the per-question and per-page costs measured here, at <= 3 pages a question shown.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH, REPO, Clock, Figure, Ratio, Result, fmt_bytes, median

QUESTIONS = 500
TARGET = 3500               # the CCKS test set's size (the issue's ~200 MB and ~1 minute are for it)
BYTES_BUDGET = 200 * 2**20
SECONDS_BUDGET = 60.0
TEMPLATES = (  # (question with the page, kind, form, retrieved pages)
    ("在文件中第{page}页的示意图中，部件2位于部件5的什么位置？", "figure_position", "figure_only", 0),
    ("根据文件中第{page}页的示意图，用于储存清洗液的是哪个部件？", "figure_other", "with_context", 2),
    ("该专利要解决的技术问题是什么？", "document", "document", 2),
)
ANSWERS = ("位于部件5的左侧", "储液箱(3)", "提高清洗效率", "安装板(21)", "位于下方", "螺栓连接")


def questions(documents: list[Any], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` questions over ``documents``' pages, the three forms in turn; deterministic."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        document = documents[i % len(documents)]
        text, kind, form, retrieved = TEMPLATES[i % 3]
        page = rng.randint(1, document.page_count)
        context = rng.sample([p for p in range(1, document.page_count + 1) if p != page], retrieved)
        pages = context if form == "document" else [page, *context]
        out.append({"id": f"b{i:04d}", "document": document.name, "question": text.format(page=page), "kind": kind,
                    "form": form, "pages": pages, "answer": ANSWERS[rng.randrange(len(ANSWERS))], "round": "b"})
    return out


def write_run(root: Path, name: str, config: dict[str, Any], dataset: Path, items: list[dict[str, Any]],
              seed: int) -> Path:
    """A run dir as the sweep leaves it: answers right, half right or wrong at random, scored by ``score_file``."""
    from omegaconf import OmegaConf

    from patentqa.eval.aggregate import headline
    from patentqa.eval.score import score_file
    from patentqa.tracking import write_json_atomic

    rng = random.Random(seed)
    run_dir = root / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({**config, "name": name}), run_dir / "config.yaml")
    write_json_atomic(run_dir / "manifest.json", {"name": name, "dataset": {"dir": str(dataset)}})
    predictions = [rng.choice([item["answer"], item["answer"][:2], ANSWERS[0]]) for item in items]
    records = [{**item, "prediction": p, "raw_answer": p, "think": None} for item, p in zip(items, predictions)]
    scores = {}
    for split in ("dev", "test"):
        out = run_dir / "eval" / split / "checkpoint-100"
        out.mkdir(parents=True)
        (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                               encoding="utf-8")
        record = score_file(out / "predictions.jsonl", ["char_f1", "char_rouge_l"], "default", "kind", resamples=100,
                            scores_path=out / "scores.jsonl", metrics_path=out / "metrics.json")
        scores[split] = headline(record["aggregate"])
    write_json_atomic(run_dir / "eval" / "sweep.json", {
        "name": name, "select_by": "composite", "base": None,
        "checkpoints": [{"name": "checkpoint-100", "step": 100, "dev": scores["dev"]}],
        "best": {"name": "checkpoint-100", "step": 100, "dev": scores["dev"], "test": scores["test"]}})
    return run_dir


def inputs(quick: bool) -> tuple[Path, list[Path], int]:
    """(cache dir, the two run dirs, pages in the cache): made once, untimed."""
    from omegaconf import OmegaConf

    from benchmarks.render import corpus, documents
    from patentqa.config import compose
    from patentqa.data.build import render_spec
    from patentqa.data.pages import render_documents
    from patentqa.tracking import write_json_atomic

    data = corpus(4 if quick else 20, 300)
    root = BENCH / "browse"
    cache = root / "cache"
    cfg = compose(["+exp=lora_r8", f"paths.root={root}", f"paths.cache_dir={cache}", f"paths.data_dir={data.parent}"])
    train = [d for d in documents(data, 10**6) if d.path.parent == data / "train" / "documents"]  # held-out docs
    rendered = render_documents(train, cache / "pages", render_spec(cfg), progress=False)  # the data stage's
    dataset = cache / "datasets" / "browse-bench"
    write_json_atomic(dataset / "manifest.json", {"data_dir": str(data)})
    items = questions(train, 60 if quick else QUESTIONS)
    config = OmegaConf.to_container(cfg, resolve=True)
    runs = [write_run(root, name, config, dataset, items, seed) for seed, name in enumerate(("baseline", "tuned"))]
    return cache, runs, len(rendered.paths)


def site_bytes(out: Path) -> dict[str, int]:
    """index.html, thumbnails, and the full pages (apparent size; hard links add no bytes on this filesystem)."""
    def total(folder: Path) -> int:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    pages = list((out / "pages").iterdir())
    return {"index": (out / "index.html").stat().st_size, "thumbs": total(out / "thumbs"),
            "thumb_count": len(list((out / "thumbs").iterdir())), "pages": total(out / "pages"),
            "pages_copied": sum(p.stat().st_size for p in pages if p.stat().st_nlink < 2), "page_count": len(pages)}


def thumbnail_seconds(cache: Path, copies: int = 8) -> float:
    """Seconds a thumbnail over the pool, every page in the cache taken ``copies`` times (hard links under other
    names: ~1,000 distinct page files, each made anew), so the pool's start weighs as little as in a browse of
    thousands of pages."""
    from patentqa.eval.thumbnails import ThumbSpec, thumbnails

    pages = sorted(p for p in (cache / "pages").rglob("*.jpg") if "copies" not in p.parts)
    linked = []
    for k in range(copies):
        for page in pages:
            target = cache / "pages" / "copies" / str(k) / page.relative_to(cache / "pages")
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(page, target)
            linked.append(target)
    shutil.rmtree(cache / "browse", ignore_errors=True)
    with Clock() as clock:
        made = thumbnails(linked, cache, ThumbSpec(), progress=False)
    assert made.made == len(linked) and not made.failed, made.failed
    return clock.seconds / len(linked)


def run(repeats: int, quick: bool = False) -> Result:
    from patentqa.eval.browse import build_browse, load_runs

    cache, runs, cached_pages = inputs(quick)
    n = 60 if quick else QUESTIONS
    process, cold, warm, sizes, per_thumb_s = [], [], [], [], []
    for _ in range(repeats):
        per_thumb_s.append(thumbnail_seconds(cache))
        shutil.rmtree(cache / "browse", ignore_errors=True)  # the thumbnail cache: cold
        out = BENCH / "browse" / "site"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "patentqa.eval.browse", f"runs=[{runs[0]},{runs[1]}]", f"out={out}"]
        with Clock() as clock:
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
        print(done.stdout + done.stderr[-3000:])  # the progress bar with its rate, in the log
        process.append(clock.seconds)
        sizes.append(site_bytes(out))
        loaded = load_runs([str(r) for r in runs])
        for name, times in (("cold", cold), ("warm", warm)):  # in-process: the build alone, no start-up
            if name == "cold":
                shutil.rmtree(cache / "browse", ignore_errors=True)
            with Clock() as clock:
                built = build_browse(loaded, loaded[0], BENCH / "browse" / f"site-{name}", progress=False)
            times.append(clock.seconds)
            assert built.questions == n and (built.thumbnails_made == 0) == (name == "warm"), built
    size = sizes[-1]
    thumbs = size["thumb_count"]
    start_s = [p - c for p, c in zip(process, cold)]
    per_question_bytes = size["index"] / n
    per_thumb_bytes = size["thumbs"] / thumbs
    shown = 3 * TARGET  # at most: the asked page and two retrieved pages a question, each page shown once
    bytes_3500 = [per_question_bytes * TARGET + per_thumb_bytes * shown for _ in sizes]
    seconds_3500 = [s + w * TARGET / n + t * shown for s, w, t in zip(start_s, warm, per_thumb_s)]
    out = Result("browse", "Question browser: a browse of 500 questions from cached pages, and 3,500 extrapolated")
    out.setup = [f"input: {n} questions over the {cached_pages} pages of the held-out documents of the render "
                 "benchmark's 300-DPI set, cached at the 32B recipe's budgets (+exp=lora_r8: 2,352,000 px a page); two "
                 "runs answering all of them; a third figure-only, a third with context (asked + 2 retrieved), a "
                 "third whole-patent (2 retrieved)",
                 "process: `python -m patentqa.eval.browse runs=[A,B] out=DIR` as a new process (start-up and imports "
                 "included), thumbnail cache empty; cold / warm: build_browse in-process into a new folder, the "
                 "thumbnail cache empty / full",
                 "thumbnail time: the cached pages taken 8 times over (hard links under other names: ~1,000 page "
                 "files), each thumbnail made anew by the pool, its start included",
                 f"3,500 questions: index.html bytes a question x 3,500 + thumbnail bytes x {shown:,} pages (3 a "
                 "question, none shared: the most); time: start-up + warm time a question x 3,500 + thumbnail time "
                 "x pages"]
    out.figures = [Figure("browse as a new process, thumbnails made", "s", process),
                   Figure("cold build (thumbnails made)", "s", cold),
                   Figure("warm build (thumbnails cached)", "s", warm),
                   Figure("thumbnail time a page", "s", per_thumb_s),
                   Figure("index.html", "B", [s["index"] for s in sizes]),
                   Figure("thumbnails", "B", [s["thumbs"] for s in sizes]),
                   Figure("full pages (hard links of the page cache: no new bytes here)", "B",
                          [s["pages"] for s in sizes]),
                   Figure("3,500 questions: index.html + thumbnails (extrapolated)", "B", bytes_3500),
                   Figure("3,500 questions: time (extrapolated)", "s", seconds_3500)]
    out.ratios = [Ratio("3,500-question browse: index.html + thumbnails / 200 MB (extrapolated)",
                        [b / BYTES_BUDGET for b in bytes_3500], 1.0, "fraction", "200 MB (budget)",
                        fmt_bytes(median(bytes_3500))),
                  Ratio("3,500-question browse: time / 60 s (extrapolated)", [s / SECONDS_BUDGET for s in seconds_3500],
                        1.0, "fraction", "60 s (budget)", f"{median(seconds_3500):.0f} s"),
                  Ratio("browse build, cold vs warm thumbnail cache", [c / w for c, w in zip(cold, warm)], None, "info",
                        f"{median(cold):.2f} s", f"{median(warm):.2f} s", "what the thumbnail cache saves")]
    out.findings = [f"{thumbs} thumbnails ({fmt_bytes(per_thumb_bytes)} each on average, "
                    f"{1 / median(per_thumb_s):.0f} pages/s over the pool), {size['page_count']} full pages linked "
                    f"({fmt_bytes(size['pages'])} apparent, {fmt_bytes(size['pages_copied'])} copied); index.html "
                    f"{fmt_bytes(per_question_bytes)} a question",
                    "a copy of the site onto another filesystem carries the full pages: "
                    f"{fmt_bytes(size['pages'] / max(size['page_count'], 1))} a page at this budget "
                    f"({fmt_bytes(size['pages'] / max(size['page_count'], 1) * shown)} for {shown:,} pages)"]
    return out
