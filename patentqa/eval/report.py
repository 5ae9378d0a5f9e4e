"""Ablation report: several runs' checkpoint sweeps side by side, as Markdown, one-file HTML and PNGs.

    python -m patentqa.eval.report runs=[RUN_A,RUN_B] baseline=RUN_A out=experiments/NAME [title=...]

Reads what the sweep left in each run dir (``manifest.json``, ``config.yaml``, ``eval/sweep.json``,
``eval/{dev,test}/{checkpoint-N,base}/{predictions,scores}.jsonl`` + ``metrics.json``); runs no
model and scores nothing anew. Every number names its split: the best checkpoint is chosen on
dev and reported on test; a run without a test split is reported on dev, labelled so.
Writes ``out/report.md``, ``out/report.html`` (inline CSS, plots as data URIs), the PNGs and
``out/report.json`` (the tables' numbers).
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from patentqa.cli import parse_args
from patentqa.eval.metrics import COMPOSITE, paired_bootstrap, strip_whitespace
from patentqa.eval.score import read_items
from patentqa.tracking import atomic_write, write_json_atomic

MAIN_METRICS = (COMPOSITE, "accuracy", "char_f1", "char_rouge_l", "exact_match")  # accuracy: round A runs only
BASE = "base"            # the sweep's name for the untuned model
TOO_LONG_FACTOR = 3.0    # "far too long": prediction longer than this × the gold answer (whitespace removed)
TOP_ITEMS = 5            # side-by-side answers per direction (regressions, improvements)
CELL_CHARS = 240         # longer answers are cut in the side-by-side tables
NO_TEST = "dev — no test split"
# Config keys that never make two runs differ in a way worth listing.
IGNORED_CONFIG = ("paths.", "name", "tags", "hydra.", "logger.", "dry_run", "resume", "checkpoint", "split",
                  "out_dir", "strict", "launcher.", "infer.batch_size", "infer.device", "retrieval.device",
                  "retrieval.batch_size", "pipeline.chunk_size")


# ---------------------------------------------------------------- reading the runs

@dataclass
class Scored:
    """One checkpoint (or the base model) of a run answered and scored on one split."""

    split: str
    checkpoint: str
    rows: dict[str, dict[str, Any]]          # id → scores.jsonl row
    records: dict[str, dict[str, Any]]       # id → predictions.jsonl record (question, raw_answer...)
    aggregate: dict[str, Any]                # metrics.json "aggregate"

    @property
    def label(self) -> str:
        return self.split if self.split == "test" else NO_TEST


@dataclass
class Run:
    path: Path
    label: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    sweep: dict[str, Any]
    main: Scored                             # best checkpoint on test, else on dev
    dev: Scored                              # best checkpoint on dev
    base: Scored | None = None               # base model on the main split


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _key(row: dict[str, Any]) -> str:
    return str(row["id"]) if row.get("id") is not None else f"line:{row.get('line')}"


def load_scored(run_dir: Path, split: str, name: str) -> Scored | None:
    """``eval/SPLIT/NAME`` of a run; None when it was not evaluated or holds no item."""
    folder = run_dir / "eval" / split / name
    if not (folder / "scores.jsonl").is_file():
        return None
    rows = _read_jsonl(folder / "scores.jsonl")
    if not rows:
        return None
    records = {}
    if (folder / "predictions.jsonl").is_file():
        records = {_key(r): r for r in read_items(folder / "predictions.jsonl")[0]}
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return Scored(split, name, {_key(r): r for r in rows}, records, metrics["aggregate"])


def _require(scored: Scored | None, run_dir: Path, split: str, name: str) -> Scored:
    if scored is None:
        raise FileNotFoundError(f"{run_dir}/eval/{split}/{name}/scores.jsonl is missing or empty although "
                                f"eval/sweep.json lists it; re-run `python -m patentqa.eval run_dir={run_dir}`")
    return scored


def load_run(run_dir: Path) -> Run:
    """A run's records and its best checkpoint's scores (test when there is a test split)."""
    sweep_path = run_dir / "eval" / "sweep.json"
    if not sweep_path.is_file():
        raise FileNotFoundError(f"{sweep_path} not found: run `python -m patentqa.eval run_dir={run_dir}` first")
    sweep = json.loads(sweep_path.read_text(encoding="utf-8"))
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")) \
        if (run_dir / "manifest.json").is_file() else {}
    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False) \
        if (run_dir / "config.yaml").is_file() else dict(manifest.get("config") or {})
    best = sweep["best"]["name"]
    dev = _require(load_scored(run_dir, "dev", best), run_dir, "dev", best)
    main, base = dev, None
    if sweep["best"].get("test") is not None:
        main = _require(load_scored(run_dir, "test", best), run_dir, "test", best)
    if sweep.get("base"):
        base = load_scored(run_dir, main.split, BASE)
    label = str(sweep.get("name") or manifest.get("name") or config.get("name") or run_dir.name)
    if sweep["best"].get("baseline"):  # a baseline-only run: name the row after the baseline
        label = str((sweep.get("baselines") or {}).get(best, {}).get("label") or best)
    return Run(run_dir, label, manifest, config, sweep, main, dev, base)


def _unique_labels(runs: list[Run]) -> None:
    """Same experiment name twice (two timestamps): add the run dir's name."""
    for suffix in (lambda i, run: f"/{run.path.name}", lambda i, run: f"#{i + 1}"):
        counts = Counter(run.label for run in runs)
        for i, run in enumerate(runs):
            if counts[run.label] > 1:
                run.label += suffix(i, run)


# ---------------------------------------------------------------- numbers

def _get(tree: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def _stat(aggregate: dict[str, Any], metric: str) -> dict[str, Any] | None:
    stats = aggregate.get("metrics", {}).get(metric)
    return stats if stats and stats.get("mean") is not None else None


def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def fmt_ci(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "–"
    return f"{stats['mean']:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


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
    (``no_final_line``); both None where no record could have them.

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
    return {"n": len(rows), "empty": sum(bool(r.get("empty")) for r in rows), "hit_max_tokens": hit,
            "style_hit_max_tokens": sum(len(t) >= style_limit for t in styled) if styled else None,
            "far_too_long": too_long,
            "unparsed": sum(bool(r["unparsed"]) for r in choices) if choices else None,
            "no_final_line": sum(not r["final_line"] for r in chains) if chains else None}


def item_deltas(baseline: Scored, run: Scored) -> list[tuple[float, str]]:
    """(run − baseline composite, id) per shared item, most negative first."""
    deltas = [(run.rows[i]["scores"][COMPOSITE] - baseline.rows[i]["scores"][COMPOSITE], i)
              for i in baseline.rows if i in run.rows
              and COMPOSITE in run.rows[i]["scores"] and COMPOSITE in baseline.rows[i]["scores"]]
    return sorted(deltas)


# ---------------------------------------------------------------- plots (matplotlib, Agg, ASCII labels)

def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _ascii(text: str, fallback: str) -> str:
    """Plot labels in ASCII (no CJK font is assumed): non-ASCII labels become ``fallback``."""
    return text if text.isascii() else fallback


def plot_dev_curves(runs: list[Run], metrics: list[str]) -> bytes:
    """Dev score vs step per metric, one line per run, best checkpoint starred, base model dashed."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    cols = 2 if len(metrics) > 1 else 1
    rows = (len(metrics) + cols - 1) // cols
    fig = Figure(figsize=(6.2 * cols + 2.5, 3.8 * rows))
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        for i, run in enumerate(runs):
            points = sorted((c["step"], c["dev"].get(metric)) for c in run.sweep["checkpoints"]
                            if c["dev"].get(metric) is not None)
            if not points:
                continue
            name = _ascii(run.label, f"run {i + 1}")
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", color=colors[i], label=name)
            best = run.sweep["best"]
            if best["dev"].get(metric) is not None:
                ax.plot([best["step"]], [best["dev"][metric]], marker="*", markersize=15, color=colors[i],
                        markeredgecolor="black", linestyle="none")
            base = (run.sweep.get("base") or {}).get("dev") or {}
            if base.get(metric) is not None:
                ax.axhline(base[metric], color=colors[i], linestyle="--", linewidth=1.2,
                           label=f"{name}: base model")
        ax.set_title(f"dev: {metric} per checkpoint", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{metric} (dev)")
        steps = sorted({c["step"] for run in runs for c in run.sweep["checkpoints"]})
        if 0 < len(steps) <= 12:
            ax.set_xticks(steps)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        top = max(ax.get_ylim()[1], 0.05)  # scores are >= 0; a flat-zero metric gets a readable 0..0.05 axis
        ax.set_ylim(-0.02 * top, top)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    select = runs[0].sweep.get("select_by", COMPOSITE)
    handles.append(Line2D([], [], marker="*", markersize=12, color="grey", markeredgecolor="black", linestyle="none"))
    labels.append(f"checkpoint chosen on dev ({select})")
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.8, 0.97), fontsize=8, frameon=False)
    return _png(fig)


def _bar_style(entry: dict[str, Any]) -> dict[str, Any]:
    """Run colour; base models grey; hatched when the numbers come from dev (no test split)."""
    return {"color": "#b0b0b0" if entry["is_base"] else entry["color"], "edgecolor": "black", "alpha": 0.9,
            "hatch": "//" if entry["split"] != "test" else None}


def plot_composite_bars(entries: list[dict[str, Any]]) -> bytes:
    """Composite of each run's best checkpoint with its 95% CI (hatched: dev, no test split)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.5, 1.3 * len(entries) + 2), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    highs = [e["stats"][COMPOSITE]["ci_high"] for e in entries if e["stats"].get(COMPOSITE)]
    top = max(highs + [0.0]) * 1.12 or 1.0  # room for the value labels; all zero → 0..1
    for i, entry in enumerate(entries):
        stats = entry["stats"].get(COMPOSITE)
        if stats is None:
            continue
        err = [[stats["mean"] - stats["ci_low"]], [stats["ci_high"] - stats["mean"]]]
        ax.bar(i, stats["mean"], yerr=err, capsize=6, **_bar_style(entry))
        ax.text(i, stats["ci_high"] + 0.01 * top, f"{stats['mean']:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(entries)), [e["plot_label"].replace(": ", "\n") + ("\n(test)" if e["split"] == "test"
                                                                                 else "\n(dev: no test split)")
                                        for e in entries], fontsize=8, rotation=25, ha="right")
    ax.set_ylabel("composite (95% CI)")
    ax.set_title("composite of the best checkpoint (chosen on dev) on test\n"
                 "grey: base model; hatched: dev, the run has no test split", fontsize=9)
    ax.set_ylim(0, top)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def plot_per_kind(entries: list[dict[str, Any]], kinds: list[str]) -> bytes:
    """Composite per question kind, one bar per run in each group, with 95% CIs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.1 * len(kinds) * max(1, len(entries)) * 0.6 + 3), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(entries))
    for j, entry in enumerate(entries):
        xs, means, errs = [], [], [[], []]
        for k, kind in enumerate(kinds):
            stats = _stat(entry["groups"].get(kind, {}), COMPOSITE)
            if stats is None:
                continue
            xs.append(k - 0.4 + width * (j + 0.5))
            means.append(stats["mean"])
            errs[0].append(stats["mean"] - stats["ci_low"])
            errs[1].append(stats["ci_high"] - stats["mean"])
        split = "test" if entry["split"] == "test" else "dev: no test"
        ax.bar(xs, means, width=width, yerr=errs, capsize=3, label=f"{entry['plot_label']} ({split})",
               **_bar_style(entry))
    ax.set_xticks(range(len(kinds)), [_ascii(k, f"kind {i + 1}") for i, k in enumerate(kinds)], fontsize=8)
    ax.set_ylabel("composite (95% CI)")
    ax.set_title("composite per question kind (best checkpoint; split in legend)", fontsize=10)
    highs = [s["ci_high"] for e in entries for g in e["groups"].values() if (s := _stat(g, COMPOSITE))]
    ax.set_ylim(0, max(highs + [0.0]) * 1.05 or 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------- document blocks → Markdown / HTML

Block = tuple  # ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", file, alt, png) | ("ul", items)


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if block[0] == "h":
            out.append("#" * block[1] + " " + block[2])
        elif block[0] == "p":
            out.append(block[1])
        elif block[0] == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif block[0] == "img":
            out.append(f"![{block[2]}]({block[1]})")
        elif block[0] == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline(text: Any) -> str:
    text = html.escape(str(text)).replace("\n", "<br>")
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


CSS = """body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","PingFang SC","Microsoft YaHei",
sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:.3em .55em;vertical-align:top;text-align:left}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
code{background:#f1f1f1;padding:0 .25em;border-radius:3px;font-size:.92em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}h1{border-bottom:2px solid #ddd}
h2{border-bottom:1px solid #eee;margin-top:1.8em}"""


def to_html(blocks: list[Block], title: str) -> str:
    out = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style></head><body>"]
    for block in blocks:
        if block[0] == "h":
            out.append(f"<h{block[1]}>{_inline(block[2])}</h{block[1]}>")
        elif block[0] == "p":
            out.append(f"<p>{_inline(block[1])}</p>")
        elif block[0] == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block[1]) + "</ul>")
        elif block[0] == "img":
            data = base64.b64encode(block[3]).decode("ascii")
            out.append(f"<img alt=\"{html.escape(block[2])}\" src=\"data:image/png;base64,{data}\">")
        elif block[0] == "table":
            head = "".join(f"<th>{_inline(c)}</th>" for c in block[1])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block[2])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    out.append("</body></html>\n")
    return "\n".join(out)


# ---------------------------------------------------------------- report sections

def _flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(tree, ensure_ascii=False) if isinstance(tree, (list, dict)) else str(tree)}


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
        row("git sha (dirty)", lambda r: f"{short(_get(r.manifest, 'git.sha'), 10)} "
                                         f"({'dirty' if _get(r.manifest, 'git.dirty') else 'clean'})"
            if _get(r.manifest, "git.sha") else "–"),
        row("ms-swift / transformers", lambda r: f"{_get(r.manifest, 'versions.ms-swift', '–')} / "
                                                 f"{_get(r.manifest, 'versions.transformers', '–')}"),
        row("dataset manifest sha256[:16]", lambda r: short(_get(r.manifest, "dataset.manifest_sha256"), 16)),
        row("split sizes dev / test", lambda r: f"{r.sweep.get('dev_split_size', '–')} / "
                                                f"{r.sweep.get('test_split_size', '–')}"),
        row("model", lambda r: f"{_get(r.config, 'model.name', '–')} (`{_get(r.config, 'model.path', '–')}`)"),
        row("LoRA rank / alpha", lambda r: f"{_get(r.config, 'train.lora_rank', '–')} / "
                                           f"{_get(r.config, 'train.lora_alpha', '–')}"),
        row("retrieval", lambda r: f"{_get(r.config, 'retrieval.name', '–')} "
                                   f"(k={_get(r.config, 'retrieval.k', '–')})"),
        row("prompt", lambda r: str(_get(r.config, "prompt.name", "–"))),
        row("pipeline stages", on_off),
        row("engine / max_new_tokens", lambda r: f"{_get(r.config, 'infer.name', '–')} / "
                                                 f"{_get(r.config, 'infer.max_new_tokens', '–')}"),
        row("checkpoints; chosen on dev by", lambda r: f"{len(r.sweep['checkpoints'])}; "
                                                       f"{r.sweep.get('select_by', COMPOSITE)}"),
        row("best checkpoint", lambda r: f"{r.sweep['best']['name']} (step {r.sweep['best']['step']})"),
    ]
    blocks: list[Block] = [("h", 2, "Provenance"), ("table", ["", *(r.label for r in runs)], rows)]
    flat = [{k: v for k, v in _flatten(r.config).items() if not k.startswith(IGNORED_CONFIG)} for r in runs]
    keys = sorted({k for f in flat for k in f if len({f.get(k, "–") for f in flat}) > 1})
    if len(runs) > 1:
        blocks.append(("p", "Config keys that differ between the runs (paths, logging and placement left out):"
                       if keys else "The runs' configs do not differ (paths, logging and placement left out)."))
        if keys:
            blocks.append(("table", ["config key", *(r.label for r in runs)],
                           [[f"`{k}`", *(f.get(k, "–") for f in flat)] for k in keys]))
    return blocks


def _entries(runs: list[Run]) -> list[dict[str, Any]]:
    """Main-table rows: each run's best checkpoint, plus each distinct base model evaluated."""
    entries, seen = [], set()
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        entries.append({"label": run.label, "plot_label": _ascii(run.label, f"run {i + 1}"), "run": run,
                        "scored": run.main, "is_base": False, "color": color})
        key = run.sweep.get("eval_key") or run.label
        if run.base is not None and key not in seen:
            seen.add(key)
            entries.append({"label": f"{run.label}: base model", "plot_label": f"{_ascii(run.label, f'run {i + 1}')}"
                            ": base model", "run": run, "scored": run.base, "is_base": True, "color": color})
    for e in entries:
        e["split"] = e["scored"].split
        e["stats"] = {m: _stat(e["scored"].aggregate, m) for m in MAIN_METRICS}
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
        path = Path(str(_get(run.manifest, "dataset.dir", ""))) / "manifest.json"
        if path.is_file():
            table = _get(json.loads(path.read_text(encoding="utf-8")), "retrieval.recall_table")
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
    for run in runs:
        if run is baseline:
            continue
        base_scored, run_scored = common_split(baseline, run)
        result = paired(base_scored, run_scored, metrics, resamples)
        numbers[run.label] = result
        split = run_scored.split if run_scored.split == "test" else "dev (a run has no test split)"
        if not result["n"]:
            rows.append([run.label, split, "0: not comparable (no shared item ids)", *(["–"] * len(metrics))])
            continue
        cells = []
        for m in metrics:
            r = result["metrics"].get(m)
            cells.append(f"{fmt(r['diff'], True)} [{fmt(r['ci_low'], True)}, {fmt(r['ci_high'], True)}] "
                         f"p={fmt_p(r['p_value'])}" if r else "–")
        rows.append([run.label, split, f"{result['n']}" + (f" ({result['unmatched']} unmatched)"
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
            cells.append(f"{fmt_ci(_stat(group, COMPOSITE))} ({group['n']})" if group else "–")
        rows.append([kind, *cells])
    return blocks + [("table", header, rows)], kinds


def failures_section(entries: list[dict[str, Any]], max_chars: int | None) -> tuple[list[Block], dict]:
    rows, numbers = [], {}
    columns = ("empty", "hit_max_tokens", "style_hit_max_tokens", "far_too_long", "unparsed", "no_final_line")
    for e in entries:
        raw_limit = max_chars or int(_get(e["run"].config, "infer.max_new_tokens", 64) or 64)
        style_limit = int(_get(e["run"].config, "pipeline.style_max_new_tokens", 32) or 32)
        counts = failures(e["scored"], raw_limit, style_limit)
        numbers[e["label"]] = {**counts, "split": e["split"], "max_chars": raw_limit, "style_max_chars": style_limit}
        n = max(counts["n"] or 0, 1)
        rows.append([e["label"], e["scored"].label, counts["n"], raw_limit,
                     *("–" if counts[k] is None else f"{counts[k]} ({100 * counts[k] / n:.0f}%)" for k in columns)])
    note = ("`answer hit max tokens`: the record's `truncated` field where present, else a raw answer at least "
            "`infer.max_new_tokens` characters long; `style pass hit max tokens`: a styled answer at least "
            "`pipeline.style_max_new_tokens` characters long (both proxies: a token holds about one to two Chinese "
            f"characters); `far too long`: prediction > {TOO_LONG_FACTOR:g}× the gold length (whitespace removed); "
            "`unparsed`: a round-A reply naming no option letter or several (scored 0); `no final line`: a chain "
            "without its `答案：` line, scored on its last line; `–`: the run has no such answers.")
    header = ["run", "split", "n", "max new tokens", "empty", "answer hit max tokens", "style pass hit max tokens",
              "far too long", "unparsed", "no final line"]
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


# ---------------------------------------------------------------- the report

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


def _metrics_present(entries: list[dict[str, Any]]) -> list[str]:
    return [m for m in MAIN_METRICS if any(e["stats"].get(m) for e in entries)]


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
    _unique_labels(loaded)
    base_run = next(r for r in loaded if r.path == base_path)
    title = title or f"Ablation report: {', '.join(r.label for r in loaded)}"
    entries = _entries(loaded)
    metrics = _metrics_present(entries)
    kinds_blocks, kinds = per_kind_section(entries)
    paired_blocks, paired_numbers = paired_section(loaded, base_run, metrics, resamples)
    failure_blocks, failure_numbers = failures_section(entries, max_tokens_chars)
    recall_blocks, recall_numbers = recall_section(loaded)
    from patentqa.eval.study import study_section  # it reads runs through this module

    study_blocks, study_numbers = study_section(loaded, resamples)
    plots = {"dev_curves.png": plot_dev_curves(loaded, metrics),
             "composite_by_run.png": plot_composite_bars(entries)}
    if kinds:
        plots["composite_per_kind.png"] = plot_per_kind(entries, kinds)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    blocks: list[Block] = [
        ("h", 1, title),
        ("p", f"Generated {now} by `patentqa.eval.report` from each run's `eval/sweep.json`. Baseline: "
              f"**{base_run.label}**. Every number names its split: checkpoints are chosen on **dev** and "
              f"reported on **test**."),
        *provenance(loaded), *main_table(entries, metrics), *study_blocks,
        ("img", "composite_by_run.png", "composite per run with 95% CI", plots["composite_by_run.png"]),
        *paired_blocks, *kinds_blocks, *recall_blocks,
        *([("img", "composite_per_kind.png", "composite per kind", plots["composite_per_kind.png"])] if kinds else []),
        ("h", 2, "Dev curves: every checkpoint on dev"),
        ("p", "One line per run; the star is the checkpoint chosen on dev, the dashed line the base model on dev."),
        ("img", "dev_curves.png", "dev metrics per checkpoint", plots["dev_curves.png"]),
        dev_table(loaded), *failure_blocks, *side_by_side(loaded, base_run)]
    out = Path(out)
    for name, png in plots.items():
        atomic_write(out / name, png)
    atomic_write(out / "report.md", to_markdown(blocks).encode("utf-8"))
    atomic_write(out / "report.html", to_html(blocks, title).encode("utf-8"))
    write_json_atomic(out / "report.json", {
        "title": title, "generated_at": now, "baseline": str(base_run.path),
        "runs": [{"label": r.label, "run_dir": str(r.path), "best": r.sweep["best"]["name"],
                  "split": r.main.split} for r in loaded],
        "main": [{"label": e["label"], "split": e["split"], "checkpoint": e["scored"].checkpoint,
                  "n": len(e["scored"].rows), "metrics": e["stats"]} for e in entries],
        "paired_vs_baseline": paired_numbers, "failures": failure_numbers, "recall_table": recall_numbers,
        "study": study_numbers})
    return out / "report.md"


@dataclass
class ReportArgs:
    runs: list[str] = MISSING               # run dirs, multirun or search dirs, or globs of them
    out: str = MISSING
    baseline: Optional[str] = None          # default: the first run found
    title: Optional[str] = None
    resamples: int = 10000                  # paired-bootstrap resamples
    max_tokens_chars: Optional[int] = None  # raw answer this long = hit the token limit; default: infer.max_new_tokens


def main(argv: list[str] | None = None) -> int:
    from patentqa.eval.study import find_runs, search_dbs, search_page

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
