"""The report's and the study's plots (matplotlib's object API, no pyplot state; ASCII labels: no CJK
font is assumed)."""
from __future__ import annotations

from typing import Any

from patentqa.eval.metrics import COMPOSITE
from patentqa.eval.render import ascii_label, png
from patentqa.eval.runs import Run, stat


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
            name = ascii_label(run.label, f"run {i + 1}")
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
    return png(fig)


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
    return png(fig)


def plot_per_kind(entries: list[dict[str, Any]], kinds: list[str]) -> bytes:
    """Composite per question kind, one bar per run in each group, with 95% CIs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.1 * len(kinds) * max(1, len(entries)) * 0.6 + 3), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(entries))
    for j, entry in enumerate(entries):
        xs, means, errs = [], [], [[], []]
        for k, kind in enumerate(kinds):
            stats = stat(entry["groups"].get(kind, {}), COMPOSITE)
            if stats is None:
                continue
            xs.append(k - 0.4 + width * (j + 0.5))
            means.append(stats["mean"])
            errs[0].append(stats["mean"] - stats["ci_low"])
            errs[1].append(stats["ci_high"] - stats["mean"])
        split = "test" if entry["split"] == "test" else "dev: no test"
        ax.bar(xs, means, width=width, yerr=errs, capsize=3, label=f"{entry['plot_label']} ({split})",
               **_bar_style(entry))
    ax.set_xticks(range(len(kinds)), [ascii_label(k, f"kind {i + 1}") for i, k in enumerate(kinds)], fontsize=8)
    ax.set_ylabel("composite (95% CI)")
    ax.set_title("composite per question kind (best checkpoint; split in legend)", fontsize=10)
    highs = [s["ci_high"] for e in entries for g in e["groups"].values() if (s := stat(g, COMPOSITE))]
    ax.set_ylim(0, max(highs + [0.0]) * 1.05 or 1.0)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return png(fig)


def plot_folds(folded: list[tuple[str, int, dict[str, Any]]]) -> bytes:
    """Per variant and seed: each fold's best-on-dev and test score, the pooled out-of-fold score with
    its 95% CI, and the final choice's test score (starred)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 1.8 * len(folded) + 2.5), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, seed, f) in enumerate(folded):
        dev = [p["dev"] for p in f["per_fold"] if p["dev"] is not None]
        test = [p["test"] for p in f["per_fold"] if p["test"] is not None]
        ax.scatter([i - 0.22] * len(dev), dev, color="C0", label="best on dev, per fold" if i == 0 else None)
        ax.scatter([i + 0.22] * len(test), test, color="C1", marker="^", label="its test score" if i == 0 else None)
        oof = f["oof"]
        if oof["mean"] is not None:
            ax.errorbar([i], [oof["mean"]], yerr=[[oof["mean"] - oof["ci_low"]], [oof["ci_high"] - oof["mean"]]],
                        fmt="s", color="black", capsize=6, label="pooled out-of-fold, 95% CI" if i == 0 else None)
        if f["final"]["test"] is not None:
            ax.scatter([i + 0.22], [f["final"]["test"]], marker="*", s=240, color="C3", edgecolor="black",
                       zorder=3, label="final choice on test" if i == 0 else None)
    ax.set_xticks(range(len(folded)), [ascii_label(f"{label}\nseed {seed}", f"variant {i + 1}\nseed {seed}")
                                       for i, (label, seed, _) in enumerate(folded)], fontsize=8)
    ax.set_xlim(-0.6, len(folded) - 0.4)
    ax.set_ylabel("score (eval.select_by; pooled: composite)")
    ax.set_title(f"{folded[0][2]['k']}-fold by document: per fold, pooled, final choice", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    return png(fig)


def plot_params(trials: list[dict[str, Any]]) -> bytes:
    """The objective against each searched parameter (complete trials; the best one starred)."""
    from matplotlib.figure import Figure

    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    names = sorted({k for t in trials for k in t["params"]})
    fig = Figure(figsize=(4.2 * max(len(names), 1), 3.4))
    axes = fig.subplots(1, max(len(names), 1), squeeze=False)
    best = max(done, key=lambda t: t["value"]) if done else None
    for ax, name in zip(axes[0], names):
        points = [(t["params"][name], t["value"]) for t in done if name in t["params"]]
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="C0")
        if best and name in best["params"]:
            ax.scatter([best["params"][name]], [best["value"]], marker="*", s=220, color="C3", label="best")
            ax.legend(loc="best", fontsize=8)
        if any(name in t["log_params"] for t in trials):
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("objective (best dev score)")
        ax.grid(alpha=0.3)
    fig.suptitle("Search: objective against each parameter")
    fig.tight_layout()
    return png(fig)


GRPO_PANELS = (("reward", "reward (the metric on sampled answers)"), ("kl", "KL to the SFT policy"),
               ("completions/mean_length", "completion length (tokens)"))


def grpo_points(logs: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, dict[str, list[list[float]]]]:
    """Per GRPO run label, per panel key (reward, kl, completion length): the [step, value] points plotted."""
    return {label: {key: [[r["step"], float(r[key])] for r in records if r.get(key) is not None]
                    for key, _ in GRPO_PANELS} for label, records in logs}


def plot_grpo_curves(points: dict[str, dict[str, list[list[float]]]]) -> bytes:
    """Per GRPO run (``grpo_points``): reward (with its 10-step mean), KL and completion length against the step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 3.6))
    for k, (key, title) in enumerate(GRPO_PANELS):
        ax = fig.add_subplot(1, len(GRPO_PANELS), k + 1)
        for i, (label, panels) in enumerate(points.items()):
            if not panels[key]:
                continue
            steps, values = [s for s, _ in panels[key]], [v for _, v in panels[key]]
            ax.plot(steps, values, color=f"C{i % 10}", alpha=0.35 if key == "reward" else 1.0,
                    label=ascii_label(label, f"run {i + 1}"))
            if key == "reward" and len(values) >= 10:
                mean = [sum(values[max(0, j - 9):j + 1]) / len(values[max(0, j - 9):j + 1]) for j in range(len(values))]
                ax.plot(steps, mean, color=f"C{i % 10}", linewidth=2, label="10-step mean")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return png(fig)

