"""Question browser: every question of a split beside the pages its prompt showed and each run's answer.

    python -m patentqa.eval.browse runs=[RUN_A,RUN_B] [baseline=RUN_A] [split=test] out=DIR

A static site that works from ``file://`` (no server): ``DIR/index.html`` (inline CSS and JS, the questions
embedded as JSON), ``DIR/thumbs/`` and ``DIR/pages/``. One row per question: its kind and document, the asked
and retrieved pages as thumbnails (gold evidence pages marked where the question file has them), the gold
answer, each run's answer with its char F1 (a Thinking model's raw reply folded) and the paired difference of
the per-question composite against the baseline (``sections.item_deltas``, the report's). The list filters by
kind, by "wrong in all runs" and by better / worse than the baseline, sorts by that difference and searches
the text of questions and answers. ``patentqa.eval.report`` writes one beside every report (``browse/``).

Pages come from the data stage's page cache, located as the data stage locates them (the run's render spec,
the PDF's hash); nothing is rendered anew. Thumbnails are made once per page and size (``thumbnails``). A
click shows the page at the size the prompt sent it (its form's budget); the file is the cached page, hard-
linked into ``DIR/pages/`` (no new bytes on the cache's filesystem, and the folder stays whole when the cache
is cleaned or the folder moved; a copy where a link cannot be made). Reads what the sweep left in each run dir;
runs no model and scores nothing anew.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from patentqa.cli import parse_args
from patentqa.data.build import prompt_config, render_spec
from patentqa.data.corpus import Document, file_sha256, question_id, row_id
from patentqa.data.pages import page_path
from patentqa.data.questions import parse_question
from patentqa.eval.metrics import COMPOSITE, char_f1
from patentqa.eval.runs import BASE, Run, Scored, load_run, load_scored, unique_labels
from patentqa.eval.sections import item_deltas
from patentqa.eval.thumbnails import ThumbSpec, image_size, place, sent_size, thumbnails
from patentqa.models import family_of
from patentqa.tracking import atomic_write, scrub

SHOWN_PROBLEMS = 20  # problem lines printed; the rest are counted (all of them are listed in the page)


@dataclass
class Column:
    """One set of answers shown side by side: a run's best checkpoint (or its base model) on the split."""

    label: str
    run: Run
    scored: Scored


@dataclass
class Browse:
    """What ``build_browse`` wrote and what it could not show."""

    index: Path
    questions: int
    columns: list[str]
    problems: list[str] = field(default_factory=list)
    thumbnails_made: int = 0
    thumbnails_cached: int = 0
    seconds: float = 0.0


class RunPages:
    """Where a run's page images are: the data stage's page cache, found by the run's render spec and each PDF's
    hash; the budget each prompt form sends a page at; the gold evidence pages of its question file."""

    def __init__(self, run: Run) -> None:
        cfg = OmegaConf.create(run.config)
        self.spec, self.prompt = render_spec(cfg), prompt_config(cfg)
        self.factor, self.slicing = int(cfg.model.image_factor), family_of(cfg.model).slicing
        self.cache_dir = Path(cfg.paths.cache_dir)
        dataset = Path(str((run.manifest.get("dataset") or {}).get("dir") or "")) / "manifest.json"
        if not dataset.is_file():
            raise FileNotFoundError(f"{dataset}: the run's dataset manifest (manifest.json dataset.dir) is missing")
        split_dir = Path(json.loads(dataset.read_text(encoding="utf-8"))["data_dir"]) / str(cfg.data.train_split)
        self.documents, self.question_file = split_dir / "documents", split_dir / f"{cfg.data.train_split}.jsonl"
        self._documents: dict[str, Document] = {}
        self._pages: dict[tuple[str, int], Path] = {}

    def page(self, document: str, page: int) -> Path:
        """The cached image of ``page`` (1-based) of ``document`` (it may be missing from the cache)."""
        if (document, page) in self._pages:
            return self._pages[(document, page)]
        if document not in self._documents:
            pdf = self.documents / document
            if not pdf.is_file():
                raise FileNotFoundError(f"{pdf}: the PDF is missing, so its cached pages cannot be found")
            self._documents[document] = Document(document, pdf, file_sha256(pdf), 0)  # page_path reads the hash
        path = self._pages[(document, page)] = page_path(self.cache_dir / "pages", self._documents[document], page,
                                                         self.spec)
        return path

    def budget(self, form: str) -> tuple[int, int]:
        """(max_pixels, min_pixels) a page goes at in a prompt of ``form``."""
        return self.prompt.budget(form), self.prompt.min_pixels

    def evidence(self) -> dict[str, list[int]]:
        """Question id → gold evidence pages, for the questions of the question file that list them."""
        out: dict[str, list[int]] = {}
        if not self.question_file.is_file():
            return out
        for line in self.question_file.read_text(encoding="utf-8").split("\n"):
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue  # the data stage reports bad lines; here they only lack evidence
            if isinstance(row, dict) and isinstance(row.get("evidence_pages"), list):
                qid = row_id(row) or question_id(str(row.get("document")), str(row.get("question")))
                out[qid] = [int(p) for p in row["evidence_pages"]]
        return out


def columns_for(runs: list[Run], baseline: Run, split: str, problems: list[str]) -> list[Column]:
    """The baseline's column first, then each run's best checkpoint on ``split``; a run without predictions for
    the split is left out (a problem line). One run alone is set against its own base model when it has one."""
    columns = []
    for run in [baseline, *(r for r in runs if r is not baseline)]:
        name = run.sweep["best"]["name"]
        folder = run.path / "eval" / split / name
        scored = load_scored(run.path, split, name)
        if scored is None:
            problems.append(f"{run.label}: no {split} scores ({folder}/scores.jsonl missing or empty): left out")
        elif not scored.records:
            problems.append(f"{run.label}: no {split} predictions ({folder}/predictions.jsonl missing): left out")
        else:
            columns.append(Column(f"{run.label} ({name})", run, scored))
    if len(columns) == 1 and columns[0].run is baseline and len(runs) == 1 and columns[0].scored.checkpoint != BASE:
        base = load_scored(baseline.path, split, BASE)
        if base is not None and base.records:
            columns.insert(0, Column(f"{baseline.label} ({BASE} model)", baseline, base))
    return columns


def _run_pages(columns: list[Column], problems: list[str]) -> list[RunPages | None]:
    found: dict[Path, RunPages | None] = {}
    for column in columns:
        if column.run.path not in found:
            try:
                found[column.run.path] = RunPages(column.run)
            except Exception as error:  # a run without its data stage's record: shown without images
                problems.append(f"{column.run.label}: its page cache cannot be located, shown without page images "
                                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
                found[column.run.path] = None
    return [found[c.run.path] for c in columns]


def _answer(row: dict[str, Any] | None, record: dict[str, Any], delta: float | None) -> dict[str, Any] | None:
    if row is None:
        return None
    prediction, raw = str(row.get("prediction") or ""), record.get("raw_answer")
    f1 = row["scores"].get("char_f1")  # scored by the sweep; a run scored without it: the same metric here
    answer: dict[str, Any] = {"text": prediction, "f1": char_f1(prediction, row["answer"]) if f1 is None else f1,
                              "score": row["scores"].get(COMPOSITE), "delta": delta}
    if isinstance(raw, str) and (raw != prediction or record.get("think") is not None):
        answer["raw"] = raw  # a Thinking model's whole reply, or the reply before the style pass and cleanup
    return answer


def shown_pages(record: dict[str, Any]) -> tuple[int | None, list[int]]:
    """(the asked page or None, the retrieved pages) a prediction's prompt showed: ``pages`` holds its images'
    pages in prompt order; the asked one is the page the question names (as the prompt builder reads it)."""
    asked = parse_question(str(record.get("question") or "")).page
    pages = [int(p) for p in record.get("pages") or []]
    return (asked if asked in pages else None), [p for p in pages if p != asked]


def _pages(document: str, records: list[dict[str, Any]], files: list[RunPages | None],
           problems: list[str]) -> list[dict[str, Any]]:
    """The pages each run's prompt showed, the baseline's order first: each with the runs that saw it at one
    (file, budget) as a view."""
    pages: dict[int, dict[str, Any]] = {}
    for k, (record, located) in enumerate(zip(records, files)):
        form = str(record.get("form") or "with_context")
        asked, retrieved = shown_pages(record)
        for number in ([asked] if asked is not None else []) + retrieved:
            entry = pages.setdefault(number, {"page": number, "asked": number == asked, "views": []})
            source = None
            if located is not None:
                try:
                    source = located.page(document, number)
                except OSError as error:
                    problems.append(f"{document} page {number}: {error}")
            budget = located.budget(form) if located is not None else None
            view = next((v for v in entry["views"] if (v["source"], v["budget"]) == (source, budget)), None)
            if view is None:
                view = {"source": source, "budget": budget, "runs": [],
                        "cache": located.cache_dir if located is not None else None,
                        "rule": (located.factor, located.slicing) if located is not None else None}
                entry["views"].append(view)
            view["runs"].append(k)
    return list(pages.values())


def question_rows(columns: list[Column], files: list[RunPages | None], wrong_below: float,
                  problems: list[str]) -> list[dict[str, Any]]:
    """One dict a question (the baseline's order, then questions only other runs answered)."""
    base = columns[0].scored
    deltas = [{} if k == 0 else {key: d for d, key in item_deltas(base, c.scored)} for k, c in enumerate(columns)]
    evidence: dict[str, list[int]] = {}
    for located in dict.fromkeys(f for f in files if f is not None):
        evidence.update(located.evidence())
    rows = []
    for key in dict.fromkeys(k for c in columns for k in c.scored.rows):
        scores = [c.scored.rows.get(key) for c in columns]
        records = [c.scored.records.get(key) or {} for c in columns]
        record = next((r for r in records if r), {})
        first = next(s for s in scores if s is not None)
        answers = [_answer(s, r, deltas[k].get(key)) for k, (s, r) in enumerate(zip(scores, records))]
        question, document = str(record.get("question") or ""), str(record.get("document") or "")
        rows.append({"id": key, "kind": first.get("kind") or record.get("kind") or "unknown", "document": document,
                     "question": question, "gold": first["answer"], "evidence": evidence.get(key),
                     "pages": _pages(document, records, files, problems), "answers": answers,
                     "wrong": all(a is None or a["f1"] < wrong_below for a in answers)})
    return rows


def _site_name(source: Path) -> str:
    return f"{hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]}-{source.stem}{source.suffix}"


def publish_images(rows: list[dict[str, Any]], out: Path, spec: ThumbSpec, progress: bool,
                   problems: list[str]) -> tuple[int, int]:
    """Thumbnails (made once, in the cache) and full pages into ``out/thumbs`` and ``out/pages`` (hard links);
    each page view gets its file names and sizes. Returns (thumbnails made, thumbnails from the cache)."""
    views = [(row["document"], page, view) for row in rows for page in row["pages"] for view in page["views"]
             if view["source"]]
    by_cache: dict[Path, list[Path]] = {}
    for page in {id(page): page for _, page, _ in views}.values():  # a page's thumbnail: its first view's
        view = next(v for v in page["views"] if v["source"])
        by_cache.setdefault(view["cache"], []).append(view["source"])
    made, failed, counts = {}, {}, [0, 0]
    for cache_dir, sources in by_cache.items():
        result = thumbnails(sources, cache_dir, spec, progress)
        made.update(result.paths)
        failed.update(result.failed)
        counts[0], counts[1] = counts[0] + result.made, counts[1] + result.cached
    placed: dict[Path, tuple[str, list[int]] | None] = {}  # each page file once: (its site name, its size)
    for document, page, view in views:
        source = view["source"]
        if source not in placed:
            placed[source] = None
            if source not in failed and source.is_file():
                name = _site_name(source)
                place(source, out / "pages" / name)
                if source in made:
                    place(made[source], out / "thumbs" / name)
                placed[source] = (name, list(image_size(source)))
        if placed[source] is None:
            reason = failed.get(source, "missing from the page cache")
            problems.append(f"{document} page {page['page']}: page image {source}: {reason}: shown without it")
            continue
        name, size = placed[source]
        if source in made and "thumb" not in page:
            page["thumb"] = f"thumbs/{name}"
        (max_pixels, min_pixels), (factor, slicing) = view["budget"], view["rule"]
        view.update(src=f"pages/{name}", file=size, size=list(sent_size(size, max_pixels, min_pixels, factor, slicing)))
    for row in rows:
        for page in row["pages"]:
            for view in page["views"]:
                for internal in ("source", "cache", "rule"):
                    view.pop(internal, None)
    keep = {entry[0] for entry in placed.values() if entry}
    for folder in (out / "thumbs", out / "pages"):  # a previous browse's images no page names any more
        for stale in (p for p in folder.glob("*") if p.is_file() and p.name not in keep):
            stale.unlink()
    return counts[0], counts[1]


def build_browse(runs: list[Run], baseline: Run, out: Path, split: str = "test", title: str | None = None, *,
                 wrong_below: float = 0.5, thumb: ThumbSpec = ThumbSpec(), progress: bool = True) -> Browse:
    """Write the browser for ``runs`` (``baseline`` first) on ``split`` into ``out``; problems (a run without
    predictions for the split, a page missing from the cache) are printed one line each, listed in the page, and
    everything else is shown."""
    started, problems = time.perf_counter(), []
    out = Path(out)
    columns = columns_for(runs, baseline, split, problems)
    if not columns:
        raise FileNotFoundError(f"no run has {split} predictions to browse: " + "; ".join(problems))
    if columns[0].run is not baseline:
        problems.append(f"the baseline {baseline.label} has no {split} predictions: differences are against "
                        f"{columns[0].label}")
    rows = question_rows(columns, _run_pages(columns, problems), wrong_below, problems)
    made, cached = publish_images(rows, out, thumb, progress, problems)
    problems = list(dict.fromkeys(problems))
    for line in problems[:SHOWN_PROBLEMS]:
        print(f"browse: {line}", file=sys.stderr)
    if len(problems) > SHOWN_PROBLEMS:
        print(f"browse: ... and {len(problems) - SHOWN_PROBLEMS} more (listed in {out / 'index.html'})",
              file=sys.stderr)
    kinds = sorted({row["kind"] for row in rows})
    data = {"title": title or f"Questions: {', '.join(c.label for c in columns)}", "split": split,
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wrong_below": wrong_below,
            "runs": [{"label": c.label, "checkpoint": c.scored.checkpoint} for c in columns], "kinds": kinds,
            "problems": problems, "questions": rows}
    index = write_index(out, data)
    return Browse(index, len(rows), [c.label for c in columns], problems, made, cached, time.perf_counter() - started)


def write_index(out: Path, data: dict[str, Any]) -> Path:
    """``out/index.html`` from the template, the data embedded as JSON (secrets scrubbed), atomically."""
    from markupsafe import Markup

    from patentqa.eval.render import render_template

    text = json.dumps(scrub(data), ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    page = render_template("browse.html.j2", title=data["title"], data=Markup(text))
    return atomic_write(Path(out) / "index.html", page.encode("utf-8"))


@dataclass
class BrowseArgs:
    runs: list[str] = MISSING           # run dirs, multirun or search dirs, or globs of them
    out: str = MISSING
    baseline: Optional[str] = None      # default: the first run found
    split: str = "test"                 # test (held-out documents) or dev
    title: Optional[str] = None
    wrong_below: float = 0.5            # an answer with char F1 below this is wrong ("wrong in all runs")
    thumb_height: int = 200             # px; thumbnails are cached per height


def load_runs(targets: list[str]) -> list[Run]:
    """The evaluated runs ``targets`` name; a target that names none is one problem line, the rest go on."""
    from patentqa.eval.study import find_runs

    runs = []
    for target in targets:
        try:
            found, skipped = find_runs([target])
        except OSError as error:
            print(f"error: runs={target}: {error}", file=sys.stderr)
            continue
        for note in skipped:
            print(f"skipped {note}", file=sys.stderr)
        for path in found:
            try:
                runs.append(load_run(path))
            except (OSError, KeyError, ValueError) as error:
                print(f"error: {path}: {error}", file=sys.stderr)
    unique_labels(runs)
    return list({run.path: run for run in runs}.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(BrowseArgs, argv)
    runs = load_runs(list(args.runs))
    if not runs:
        print("error: no evaluated run (eval/sweep.json) among runs=", file=sys.stderr)
        return 1
    baseline = runs[0]
    if args.baseline:
        wanted = Path(args.baseline).resolve()
        baseline = next((r for r in runs if r.path == wanted), None) or runs[0]
        if baseline.path != wanted:
            print(f"error: baseline={args.baseline} is not among the runs loaded; the baseline is {baseline.path}",
                  file=sys.stderr)
    try:
        browse = build_browse(runs, baseline, Path(args.out), args.split, args.title, wrong_below=args.wrong_below,
                              thumb=ThumbSpec(height=args.thumb_height))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {browse.index}: {browse.questions} {args.split} questions, {len(browse.columns)} runs, "
          f"{browse.thumbnails_made} thumbnails made ({browse.thumbnails_cached} cached), {len(browse.problems)} "
          f"problems, {browse.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
