"""The report's sections: each turns loaded runs into document blocks (and the numbers behind them).

Every number names its split: a run's best checkpoint is chosen on dev and reported on test; a run
without a test split is reported on dev, labelled so.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from patentqa.eval.aggregate import paired_bootstrap
from patentqa.eval.metrics import COMPOSITE, strip_whitespace
from patentqa.eval.render import Block, ascii_label, fmt, fmt_ci, fmt_p
from patentqa.eval.runs import BASE, Run, Scored, differing_keys, get, stat

MAIN_METRICS = (COMPOSITE, "accuracy", "char_f1", "char_rouge_l", "exact_match")  # accuracy: round A runs only
TOO_LONG_FACTOR = 3.0    # "far too long": prediction longer than this × the gold answer (whitespace removed)
TOP_ITEMS = 5            # side-by-side answers per direction (regressions, improvements)
CELL_CHARS = 240         # longer answers are cut in the side-by-side tables


# ---------------------------------------------------------------- numbers

def common_split(a: Run, b: Run) -> tuple[Scored, Scored]:
    """Both runs' best checkpoints on the same split: test when both have it, else dev."""
    return (a.main, b.main) if a.main.split == b.main.split == "test" else (a.dev, b.dev)


def paired(baseline: Scored, run: Scored, metrics: list[str], resamples: int) -> dict[str, Any]:
    """Paired bootstrap of run − baseline per metric over the items both scored (aligned by id)."""
    ids = [i for i in baseline.rows if i in run.rows]
    out: dict[str, Any] = {"split": run.split, "n": len(ids),
                           "unmatched": len(baseline.rows) + len(run.rows) - 2 * len(ids), "metrics": {}}
    for metric in metrics:
        pairs = [(run.rows[i]["scores"].get(metric), baseline.rows[i]["scores"].get(metric)) for i in ids]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        if pairs:
            out["metrics"][metric] = paired_bootstrap([x for x, _ in pairs], [y for _, y in pairs], resamples)
    return out


def failures(scored: Scored, raw_limit: int, style_limit: int) -> dict[str, int | None]:
    """Empty predictions, answers that hit a token limit, predictions > 3× the gold length; round A
    replies naming no single option letter (``unparsed``), chains without their "答案：" line
    (``no_final_line``), Thinking replies whose ``<think>`` never closed (``unclosed_think``: scored as
    empty, so also in ``empty``); each None where no record could have them.

    The answer call hit its limit: the record's ``truncated`` field, else a raw answer of at least
    ``raw_limit`` characters; the style pass: a styled answer of at least ``style_limit`` characters
    (None when no record went through a style pass).
    """
    records = [scored.records.get(key, {}) for key in scored.rows]
    hit = sum(bool(r["truncated"]) if r.get("truncated") is not None else len(str(r.get("raw_answer") or "")) >= raw_limit
              for r in records)
    styled = [r["styled_answer"] for r in records if isinstance(r.get("styled_answer"), str)]
    rows = list(scored.rows.values())
    too_long = sum(len(strip_whitespace(r["prediction"])) > TOO_LONG_FACTOR * len(strip_whitespace(r["answer"]))
                   for r in rows)
    choices = [r for r in records if "unparsed" in r]
    chains = [r for r in records if r.get("final_line") is not None]
    thinks = [r for r in records if r.get("think") is not None]
    return {"n": len(rows), "empty": sum(bool(r.get("empty")) for r in rows), "hit_max_tokens": hit,
            "style_hit_max_tokens": sum(len(t) >= style_limit for t in styled) if styled else None,
            "far_too_long": too_long,
            "unparsed": sum(bool(r["unparsed"]) for r in choices) if choices else None,
            "no_final_line": sum(not r["final_line"] for r in chains) if chains else None,
            "unclosed_think": sum(r["think"] == "unclosed" for r in thinks) if thinks else None}


def item_deltas(baseline: Scored, run: Scored) -> list[tuple[float, str]]:
    """(run − baseline composite, id) per shared item, most negative first."""
    deltas = [(run.rows[i]["scores"][COMPOSITE] - baseline.rows[i]["scores"][COMPOSITE], i)
              for i in baseline.rows if i in run.rows
              and COMPOSITE in run.rows[i]["scores"] and COMPOSITE in baseline.rows[i]["scores"]]
    return sorted(deltas)


# ---------------------------------------------------------------- sections

def provenance(runs: list[Run]) -> list[Block]:
    """Per run: where it lives, what produced it, what it trained on, the knobs that matter."""
    def row(name: str, value: Any) -> list[Any]:
        return [name, *(value(run) for run in runs)]

    def short(text: Any, n: int) -> str:
        return f"`{str(text)[:n]}`" if text else "–"

    def on_off(run: Run) -> str:
        p = run.config.get("pipeline") or {}
        return (f"router={p.get('router', '?')}, style pass {'on' if p.get('style_pass') else 'off'}, "
                f"cleanup {'on' if p.get('cleanup') else 'off'}") if p else "–"

    rows = [
        row("run dir", lambda r: f"`{r.path}`"),
        row("tags", lambda r: ", ".join(map(str, r.config.get("tags") or [])) or "–"),
        row("state", lambda r: r.manifest.get("state", "–")),
        row("git sha (dirty)", lambda r: f"{short(get(r.manifest, 'git.sha'), 10)} "
                                         f"({'dirty' if get(r.manifest, 'git.dirty') else 'clean'})"
            if get(r.manifest, "git.sha") else "–"),
        row("ms-swift / transformers", lambda r: f"{get(r.manifest, 'versions.ms-swift', '–')} / "
                                                 f"{get(r.manifest, 'versions.transformers', '–')}"),
        row("dataset manifest sha256[:16]", lambda r: short(get(r.manifest, "dataset.manifest_sha256"), 16)),
        row("split sizes dev / test", lambda r: f"{r.sweep.get('dev_split_size', '–')} / "
                                                f"{r.sweep.get('test_split_size', '–')}"),
        row("model", lambda r: f"{get(r.config, 'model.name', '–')} (`{get(r.config, 'model.path', '–')}`)"),
        row("LoRA rank / alpha", lambda r: f"{get(r.config, 'train.lora_rank', '–')} / "
                                           f"{get(r.config, 'train.lora_alpha', '–')}"),
        row("retrieval", lambda r: f"{get(r.config, 'retrieval.name', '–')} "
                                   f"(k={get(r.config, 'retrieval.k', '–')})"),
        row("prompt", lambda r: str(get(r.config, "prompt.name", "–"))),
        row("pipeline stages", on_off),
        row("engine / max_new_tokens", lambda r: f"{get(r.config, 'infer.name', '–')} / "
                                                 f"{get(r.config, 'infer.max_new_tokens', '–')}"),
        row("checkpoints; chosen on dev by", lambda r: f"{len(r.sweep['checkpoints'])}; "
                                                       f"{r.sweep.get('select_by', COMPOSITE)}"),
        row("best checkpoint", lambda r: f"{r.sweep['best']['name']} (step {r.sweep['best']['step']})"),
    ]
    blocks: list[Block] = [("h", 2, "Provenance"), ("table", ["", *(r.label for r in runs)], rows)]
    flat, keys = differing_keys([r.design_config for r in runs])
    if len(runs) > 1:
        blocks.append(("p", "Config keys that differ between the runs (paths, logging and placement left out):"
                       if keys else "The runs' configs do not differ (paths, logging and placement left out)."))
        if keys:
            blocks.append(("table", ["config key", *(r.label for r in runs)],
                           [[f"`{k}`", *(f.get(k, "–") for f in flat)] for k in keys]))
    return blocks


def base_name(run: Run) -> str:
    """What a run's base row is: the untuned model, or (GRPO, ``init_from``) the SFT policy it started from."""
    start = run.manifest.get("init_from")
    if not start:
        return "base model"
    checkpoint = Path(start["checkpoint"])
    return f"SFT policy ({checkpoint.name} of {Path(start['run']).name})"


def entries_of(runs: list[Run]) -> list[dict[str, Any]]:
    """Main-table rows: each run's best checkpoint, plus each distinct base model evaluated."""
    entries, seen = [], set()
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        entries.append({"label": run.label, "plot_label": ascii_label(run.label, f"run {i + 1}"), "run": run,
                        "scored": run.main, "is_base": False, "color": color})
        key = run.sweep.get("eval_key") or run.label
        if run.base is not None and key not in seen:
            seen.add(key)
            what = base_name(run)
            entries.append({"label": f"{run.label}: {what}", "plot_label": f"{ascii_label(run.label, f'run {i + 1}')}"
                            f": {ascii_label(what, 'base model')}", "run": run, "scored": run.base, "is_base": True,
                            "color": color})
    for e in entries:
        e["split"] = e["scored"].split
        e["stats"] = {m: stat(e["scored"].aggregate, m) for m in MAIN_METRICS}
        e["groups"] = e["scored"].aggregate.get("groups", {})
    return entries


def main_table(entries: list[dict[str, Any]], metrics: list[str]) -> list[Block]:
    header = ["run", "checkpoint (step)", "split", "n", *(f"{m} [95% CI]" for m in metrics), "chosen by (dev)"]
    rows = []
    for e in entries:
        run, scored = e["run"], e["scored"]
        step = 0 if e["is_base"] else run.sweep["best"]["step"]
        dev = ((run.sweep.get("base") or {}).get("dev") if e["is_base"] else run.sweep["best"]["dev"]) or {}
        select = run.sweep.get("select_by", COMPOSITE)
        rows.append([e["label"], f"{scored.checkpoint} ({step})", scored.label, len(scored.rows),
                     *(fmt_ci(e["stats"].get(m)) for m in metrics), f"{fmt(dev.get(select))} ({select}, dev)"])
    blocks: list[Block] = [
        ("h", 2, "Results: best checkpoint (chosen on dev) scored on test"),
        ("p", "Each run's best checkpoint was chosen on the dev split and scored once on the test split; the "
              "`split` column names where every number in its row comes from (95% percentile-bootstrap CIs "
              "from the sweep's `metrics.json`). The last column is the dev score the checkpoint was chosen by.")]
    fallback = [e["label"] for e in entries if e["split"] != "test"]
    if fallback:
        blocks.append(("p", f"**No test split** for {', '.join(fallback)}: those rows are scored on **dev** — the "
                            "split the checkpoint was chosen on, so they are optimistic and not comparable with "
                            "test rows."))
    blocks.append(("table", header, rows))
    if any(e["run"].sweep["best"].get("baseline") for e in entries):
        from patentqa.eval.baselines import LABEL

        blocks.append(("p", f"**{LABEL}** answers position questions from where OCR read the two part numbers on "
                            "the asked page and says nothing to other questions (they score 0). Part numbers sit at "
                            "the far ends of leader lines, beside their parts: this row is a baseline that shows how "
                            "much of the position task a model adds, not ground truth. See its per-kind row."))
    return blocks


def recall_section(runs: list[Run]) -> tuple[list[Block], dict]:
    """Recall@k of the gold evidence pages per retriever and question kind, from a dataset manifest."""
    tables = []
    for run in runs:
        path = Path(str(get(run.manifest, "dataset.dir", ""))) / "manifest.json"
        if path.is_file():
            table = get(json.loads(path.read_text(encoding="utf-8")), "retrieval.recall_table")
            if table:
                tables.append(table)
    if not tables:
        return [], {}
    table = max(tables, key=lambda t: sum("skipped" not in v for v in t.values()))  # the most complete one
    kinds = sorted({kind for v in table.values() if "skipped" not in v for row in v.values() for kind in row})
    rows = []
    for name, by_k in table.items():
        if "skipped" in by_k:
            rows.append([name, "–", f"skipped: {by_k['skipped']}", *(["–"] * (len(kinds) - 1))])
            continue
        for k, row in by_k.items():
            rows.append([name, k.split("=")[1], *(fmt(row.get(kind, {}).get("recall")) if row.get(kind) else "–"
                                                  for kind in kinds)])
    blocks: list[Block] = [
        ("h", 2, "Retrieval: recall@k of the gold evidence pages"),
        ("p", "Share of each question's gold evidence pages (other than the asked page) among the k pages a "
              "retriever shows, on every labelled question of the synthetic set (dataset manifest)."),
        ("table", ["retriever", "k", *kinds], rows)]
    return blocks, table


def paired_section(runs: list[Run], baseline: Run, metrics: list[str], resamples: int) -> tuple[list[Block], dict]:
    blocks: list[Block] = [("h", 2, f"Paired differences vs the baseline ({baseline.label})"),
                           ("p", f"run − baseline on the items both answered (aligned by id), paired bootstrap "
                                 f"({resamples} resamples, seed 0); p: two-sided, against no difference.")]
    rows, numbers = [], {}
    pairs = [(run.label, *common_split(baseline, run)) for run in runs if run is not baseline]
    # a run that started from an SFT policy (GRPO) is also set against that policy, on the same split
    pairs += [(f"{run.label} − its {base_name(run)}", run.base, run.main) for run in runs
              if run.manifest.get("init_from") and run.base is not None and run.base.split == run.main.split]
    for label, base_scored, run_scored in pairs:
        result = paired(base_scored, run_scored, metrics, resamples)
        numbers[label] = result
        split = run_scored.split if run_scored.split == "test" else "dev (a run has no test split)"
        if not result["n"]:
            rows.append([label, split, "0: not comparable (no shared item ids)", *(["–"] * len(metrics))])
            continue
        cells = []
        for m in metrics:
            r = result["metrics"].get(m)
            cells.append(f"{fmt(r['diff'], True)} [{fmt(r['ci_low'], True)}, {fmt(r['ci_high'], True)}] "
                         f"p={fmt_p(r['p_value'])}" if r else "–")
        rows.append([label, split, f"{result['n']}" + (f" ({result['unmatched']} unmatched)"
                                                          if result["unmatched"] else ""), *cells])
    if rows:
        blocks.append(("table", ["run", "split", "paired items", *(f"Δ {m} [95% CI] p" for m in metrics)], rows))
    else:
        blocks.append(("p", "Only the baseline was given: nothing to compare."))
    return blocks, numbers


def per_kind_section(entries: list[dict[str, Any]]) -> tuple[list[Block], list[str]]:
    kinds = sorted({k for e in entries for k in e["groups"]})
    blocks: list[Block] = [("h", 2, "Per question kind: composite [95% CI] (n)")]
    if not kinds:
        return blocks + [("p", "No per-kind breakdown: the runs were scored without `eval.by`.")], kinds
    header = ["kind", *(f"{e['label']} ({e['scored'].label})" for e in entries)]
    rows = []
    for kind in kinds:
        cells = []
        for e in entries:
            group = e["groups"].get(kind)
            cells.append(f"{fmt_ci(stat(group, COMPOSITE))} ({group['n']})" if group else "–")
        rows.append([kind, *cells])
    return blocks + [("table", header, rows)], kinds


def failures_section(entries: list[dict[str, Any]], max_chars: int | None) -> tuple[list[Block], dict]:
    rows, numbers = [], {}
    columns = ("empty", "hit_max_tokens", "style_hit_max_tokens", "far_too_long", "unparsed", "no_final_line",
               "unclosed_think")
    for e in entries:
        raw_limit = max_chars or int(get(e["run"].config, "infer.max_new_tokens", 64) or 64)
        style_limit = int(get(e["run"].config, "pipeline.style_max_new_tokens", 32) or 32)
        counts = failures(e["scored"], raw_limit, style_limit)
        numbers[e["label"]] = {**counts, "split": e["split"], "checkpoint": e["scored"].checkpoint,
                               "max_chars": raw_limit, "style_max_chars": style_limit}
        n = max(counts["n"] or 0, 1)
        rows.append([e["label"], e["scored"].label, counts["n"], raw_limit,
                     *("–" if counts[k] is None else f"{counts[k]} ({100 * counts[k] / n:.0f}%)" for k in columns)])
    note = ("`answer hit max tokens`: the record's `truncated` field where present, else a raw answer at least "
            "`infer.max_new_tokens` characters long; `style pass hit max tokens`: a styled answer at least "
            "`pipeline.style_max_new_tokens` characters long (both proxies: a token holds about one to two Chinese "
            f"characters); `far too long`: prediction > {TOO_LONG_FACTOR:g}× the gold length (whitespace removed); "
            "`unparsed`: a round-A reply naming no option letter or several (scored 0); `no final line`: a chain "
            "without its `答案：` line, scored on its last line; `unclosed think`: a Thinking model's reply whose "
            "`<think>` block never closed (cut at the token limit), scored as an empty answer (so also under "
            "`empty`); `–`: the run has no such answers.")
    header = ["run", "split", "n", "max new tokens", "empty", "answer hit max tokens", "style pass hit max tokens",
              "far too long", "unparsed", "no final line", "unclosed think"]
    return [("h", 2, "Failures"), ("p", note), ("table", header, rows)], numbers


def _answer(text: Any) -> str:
    text = str(text if text is not None else "")
    if not text.strip():
        return "(empty)"
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "…"


def side_by_side(runs: list[Run], baseline: Run) -> list[Block]:
    blocks: list[Block] = [("h", 2, f"Largest regressions and improvements vs the baseline ({baseline.label})")]
    if len(runs) == 1:
        blocks.append(("p", "Only the baseline was given: nothing to compare."))
    for run in runs:
        if run is baseline:
            continue
        base_scored, run_scored = common_split(baseline, run)
        deltas = item_deltas(base_scored, run_scored)
        for title, chosen in (("regressions", [d for d in deltas if d[0] < 0][:TOP_ITEMS]),
                              ("improvements", [d for d in reversed(deltas) if d[0] > 0][:TOP_ITEMS])):
            blocks.append(("h", 3, f"{run.label}: largest {title} ({run_scored.split} split, per-item composite)"))
            if not chosen:
                direction = "lower" if title == "regressions" else "higher"
                blocks.append(("p", f"None: no shared item scored {direction}."))
                continue
            rows = []
            for delta, key in chosen:
                record = run_scored.records.get(key) or base_scored.records.get(key) or {}
                row = run_scored.rows[key]
                rows.append([key, row.get("kind", "–"), _answer(record.get("question", "–")),
                             _answer(row["answer"]), _answer(base_scored.rows[key]["prediction"]),
                             _answer(row["prediction"]), fmt(delta, True)])
            blocks.append(("table", ["id", "kind", "question", "gold", "baseline prediction",
                                     f"{run.label} prediction", "Δ composite"], rows))
    return blocks


def dev_table(runs: list[Run]) -> Block:
    """Every checkpoint's dev score on the selection metric (best marked)."""
    rows = []
    for run in runs:
        select = run.sweep.get("select_by", COMPOSITE)
        base = (run.sweep.get("base") or {}).get("dev")
        if base:
            rows.append([run.label, BASE, 0, f"{fmt(base.get(select))} ({select}, dev)", ""])
        for c in sorted(run.sweep["checkpoints"], key=lambda c: c["step"]):
            rows.append([run.label, c["name"], c["step"], f"{fmt(c['dev'].get(select))} ({select}, dev)",
                         "best" if c["name"] == run.sweep["best"]["name"] else ""])
    return ("table", ["run", "checkpoint", "step", "score on dev", "chosen"], rows)


def metrics_present(entries: list[dict[str, Any]]) -> list[str]:
    return [m for m in MAIN_METRICS if any(e["stats"].get(m) for e in entries)]

