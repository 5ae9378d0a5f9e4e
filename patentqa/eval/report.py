"""Ablation report: several runs' checkpoint sweeps side by side, as Markdown, one-file HTML and PNGs.

    python -m patentqa.eval.report runs=[RUN_A,RUN_B] baseline=RUN_A out=experiments/NAME [title=...]
    python -m patentqa.eval.report runs=[runs/multirun/2026-12-02_10-00-00] out=...   # a whole study

Reads what the sweep left in each run dir (``patentqa.eval.runs``); runs no model and scores
nothing anew. Sections (``patentqa.eval.sections``, ``patentqa.eval.study``) build document blocks;
``patentqa.eval.render`` writes them as ``out/report.md`` and ``out/report.html`` (a Jinja2
template: inline CSS, plots as data URIs) beside the PNGs and ``out/report.json`` (the numbers), and
``patentqa.eval.browse`` the question browser ``out/browse/index.html``, which the report links.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

from patentqa.cli import parse_args
from patentqa.eval import plots, sections
from patentqa.eval.render import Block, write_document
from patentqa.eval.runs import Run, grpo_log, load_run, unique_labels
from patentqa.eval.study import find_runs, search_dbs, search_page, study_section
from patentqa.tracking import write_json_atomic


def build_report(runs: list[Path], baseline: Path, out: Path, title: str | None = None, *,
                 resamples: int = 10000, max_tokens_chars: int | None = None) -> Path:
    """Write ``report.md``, ``report.html``, ``report.json`` and the PNGs into ``out``; return ``report.md``.

    ``baseline`` is added in front when it is not among ``runs``. ``max_tokens_chars``: raw-answer
    length that counts as hitting the token limit (default: each run's ``infer.max_new_tokens``).
    """
    paths = [Path(p).resolve() for p in runs]
    base_path = Path(baseline).resolve()
    if base_path not in paths:
        paths.insert(0, base_path)
    loaded = [load_run(p) for p in dict.fromkeys(paths)]
    unique_labels(loaded)
    base_run = next(r for r in loaded if r.path == base_path)
    title = title or f"Ablation report: {', '.join(r.label for r in loaded)}"
    entries = sections.entries_of(loaded)
    metrics = sections.metrics_present(entries)
    kinds_blocks, kinds = sections.per_kind_section(entries)
    paired_blocks, paired_numbers = sections.paired_section(loaded, base_run, metrics, resamples)
    failure_blocks, failure_numbers = sections.failures_section(entries, max_tokens_chars)
    recall_blocks, recall_numbers = sections.recall_section(loaded)
    study_blocks, study_numbers = study_section(loaded, resamples)
    curve_blocks, curve_points = grpo_blocks(loaded)
    link_blocks, browse_numbers = browse_blocks(loaded, base_run, Path(out), title)
    per_kind: list[Block] = [("img", "composite_per_kind.png", "composite per kind",
                              plots.plot_per_kind(entries, kinds))] if kinds else []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    blocks: list[Block] = [
        ("h", 1, title),
        ("p", f"Generated {now} by `patentqa.eval.report` from each run's `eval/sweep.json`. Baseline: "
              f"**{base_run.label}**. Every number names its split: checkpoints are chosen on **dev** and "
              f"reported on **test**."),
        *link_blocks, *sections.provenance(loaded), *sections.main_table(entries, metrics), *study_blocks,
        ("img", "composite_by_run.png", "composite per run with 95% CI", plots.plot_composite_bars(entries)),
        *paired_blocks, *kinds_blocks, *recall_blocks, *per_kind,
        ("h", 2, "Dev curves: every checkpoint on dev"),
        ("p", "One line per run; the star is the checkpoint chosen on dev, the dashed line the base model on dev."),
        ("img", "dev_curves.png", "dev metrics per checkpoint", plots.plot_dev_curves(loaded, metrics)),
        sections.dev_table(loaded), *curve_blocks, *failure_blocks, *sections.side_by_side(loaded, base_run)]
    out = Path(out)
    path = write_document(out, "report", blocks, title)
    write_json_atomic(out / "report.json", {
        "title": title, "generated_at": now, "baseline": str(base_run.path),
        "runs": [{"label": r.label, "run_dir": str(r.path), "best": r.sweep["best"]["name"],
                  "split": r.main.split} for r in loaded],
        "main": [{"label": e["label"], "split": e["split"], "checkpoint": e["scored"].checkpoint,
                  "n": len(e["scored"].rows), "metrics": e["stats"]} for e in entries],
        "paired_vs_baseline": paired_numbers, "failures": failure_numbers, "recall_table": recall_numbers,
        "study": study_numbers, "grpo_curves": curve_points, "browse": browse_numbers})
    return path


def browse_blocks(runs: list[Run], baseline: Run, out: Path, title: str) -> tuple[list[Block], dict[str, Any]]:
    """The question browser beside the report (``out/browse/``) and the line that links it; a browser that
    cannot be written is one error line, and the report goes on without it."""
    from patentqa.eval.browse import build_browse  # the data stage's page cache (pymupdf): only when reporting

    split = baseline.main.split
    try:
        browse = build_browse(runs, baseline, out / "browse", split, f"Question browser: {title}")
    except (OSError, ValueError, KeyError) as error:
        print(f"error: question browser not written: {error}", file=sys.stderr)
        return [], {}
    problems = f"; {len(browse.problems)} problem(s) listed in it" if browse.problems else ""
    return [("p", f"**Question browser**: [every {split} question beside the pages its prompt showed and each "
                  f"run's answer](browse/index.html) (`browse/index.html`: {browse.questions} questions, filters "
                  f"and search; opens from the folder, no server{problems}).")], \
        {"index": "browse/index.html", "split": split, "questions": browse.questions, "columns": browse.columns,
         "problems": browse.problems}


def grpo_blocks(runs: list[Run]) -> tuple[list[Block], dict[str, Any]]:
    """Training curves of the GRPO runs among ``runs`` (none: no section), and the points they plot."""
    logs = [(run.label, log) for run in runs if (log := grpo_log(run))]
    if not logs:
        return [], {}
    points = plots.grpo_points(logs)
    return [("h", 2, "GRPO: reward, KL and completion length per step"),
            ("p", "From swift's logging.jsonl: the reward is the run's metric on the answers sampled at the "
                  "training temperature (the sweep scores greedy answers); KL is to the SFT policy GRPO started from."),
            ("img", "grpo_curves.png", "GRPO reward, KL and completion length", plots.plot_grpo_curves(points))], points


@dataclass
class ReportArgs:
    runs: list[str] = MISSING               # run dirs, multirun or search dirs, or globs of them
    out: str = MISSING
    baseline: Optional[str] = None          # default: the first run found
    title: Optional[str] = None
    resamples: int = 10000                  # paired-bootstrap resamples
    max_tokens_chars: Optional[int] = None  # raw answer this long = hit the token limit; default: infer.max_new_tokens


def main(argv: list[str] | None = None) -> int:
    args = parse_args(ReportArgs, argv)
    if not args.runs:
        print("error: runs=[RUN_A,RUN_B,...] names no run", file=sys.stderr)
        return 2
    try:
        found, skipped = find_runs(args.runs)
        for note in skipped:
            print(f"skipped {note}", file=sys.stderr)
        for db in search_dbs(args.runs):
            print(f"wrote {search_page(db, Path(args.out))} (search study)")
        if not found:
            print("error: no evaluated run (eval/sweep.json) among runs=", file=sys.stderr)
            return 1
        path = build_report(found, Path(args.baseline or found[0]), Path(args.out), args.title,
                            resamples=args.resamples, max_tokens_chars=args.max_tokens_chars)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyError as error:
        print(f"error: a run's eval/sweep.json or metrics.json lacks the key {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}, {path.with_suffix('.html')} and plots in {path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
