"""Studies: many runs read as one design: K folds by document, several seeds, a hyperparameter search.

Runs are grouped into **variants** by the config keys that differ between them, leaving out the
study's axes (``seed``, ``data.fold``) and what never changes a result (paths, logging, placement).
Per variant:

- **folds**: each fold's best-on-dev score, mean ± sd over folds, and the pooled out-of-fold score:
  every non-test labelled question answered once, by the best checkpoint of the fold model that
  did not train on it (dev = that fold), with its bootstrap interval. The checkpoint was picked
  on those same questions, so the pooled score leans optimistic; the test column does not.
  Test: each fold model's score, and the **final choice** by the rule ``FINAL_RULE``.
- **seeds**: mean ± sd over seeds beside the mean bootstrap interval of one seed's run, and
  which of the two is wider.
- **paired**: each variant against the first, items paired on (seed, fold, question).

A search dir with Optuna's ``optuna.db`` also gets a study page (``study.md``/``.html``):
every trial, the best one, and the score against each searched parameter.
"""
from __future__ import annotations

import glob
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patentqa.eval.aggregate import bootstrap_ci, paired_bootstrap
from patentqa.eval.metrics import COMPOSITE
from patentqa.eval.plots import plot_folds, plot_params
from patentqa.eval.render import Block, fmt, fmt_p, write_document
from patentqa.eval.runs import IGNORED_CONFIG, Run, differing_keys, get

STUDY_AXES = ("seed", "data.fold")  # members of one variant differ only in these
FINAL_RULE = "the fold model with the highest best-on-dev score"


def _expand(targets: list[str | Path]) -> list[Path]:
    """Each target, or the paths its glob matches."""
    return [Path(m) for target in targets for m in (sorted(glob.glob(str(target))) or [str(target)])]


def find_runs(targets: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Run dirs (with ``eval/sweep.json``) named by ``targets``: run dirs, multirun/search dirs or globs;
    plus a note for each dir found without a sweep (a failed or killed member)."""
    runs: list[Path] = []
    skipped: list[str] = []
    for match in _expand(targets):
        if (match / "eval" / "sweep.json").is_file():
            runs.append(match)
            continue
        if not match.exists():
            raise FileNotFoundError(f"{match}: no such run dir, multirun dir or glob match")
        members = sorted((p for p in match.iterdir() if p.is_dir()), key=_member_order) if match.is_dir() else []
        for member in members:
            if (member / "eval" / "sweep.json").is_file():
                runs.append(member)
            elif (member / "manifest.json").is_file() or (member / "eval").is_dir() or (member / ".hydra").is_dir():
                skipped.append(f"{member}: no eval/sweep.json (failed, killed or not evaluated)")
    return list(dict.fromkeys(p.resolve() for p in runs)), skipped


def _member_order(path: Path) -> tuple[int, str]:
    head = path.name.split("_", 1)[0]
    return (int(head), path.name) if head.isdigit() else (1 << 30, path.name)


@dataclass
class Member:
    """One run of a variant: its place in the design and its scores."""

    run: Run
    seed: int
    fold: int | None
    folds: int | None
    dev: float | None           # best checkpoint's dev score (select_by)
    test: float | None          # the same checkpoint on test


@dataclass
class Variant:
    label: str
    keys: dict[str, str]
    members: list[Member] = field(default_factory=list)


def _value(run: Run, dotted: str) -> Any:
    return get(run.config, dotted)


def group_variants(runs: list[Run]) -> list[Variant]:
    """Runs grouped by the config keys that differ, the study axes left out (first-seen order)."""
    flat, differ = differing_keys([run.design_config for run in runs], (*IGNORED_CONFIG, *STUDY_AXES))
    variants: dict[tuple, Variant] = {}
    for run, f in zip(runs, flat):
        values = tuple(f.get(k, "–") for k in differ)
        if values not in variants:
            label = ", ".join(f"{k}={v}" for k, v in zip(differ, values)) if differ else str(run.label).split("/")[0]
            variants[values] = Variant(label, dict(zip(differ, values)))
        select = run.sweep.get("select_by") or COMPOSITE
        best = run.sweep["best"]
        folds = _value(run, "data.folds")
        variants[values].members.append(Member(
            run, int(_value(run, "seed") or 0), int(_value(run, "data.fold") or 0) if folds else None,
            int(folds) if folds else None, (best.get("dev") or {}).get(select), (best.get("test") or {}).get(select)))
    return list(variants.values())


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _composites(scored: Any) -> dict[str, float]:
    return {key: row["scores"][COMPOSITE] for key, row in scored.rows.items() if COMPOSITE in row["scores"]}


def fold_summary(variant: Variant, resamples: int) -> dict[str, Any] | None:
    """Per seed with K folds: per-fold dev/test, mean ± sd, pooled out-of-fold with its CI, the final choice."""
    by_seed: dict[int, list[Member]] = defaultdict(list)
    for m in variant.members:
        if m.folds:
            by_seed[m.seed].append(m)
    if not by_seed:
        return None
    out = {}
    for seed, members in sorted(by_seed.items()):
        members.sort(key=lambda m: m.fold)
        k = members[0].folds
        pooled = [v for m in members for v in _composites(m.run.dev).values()]  # dev of fold f = fold f's questions
        low, high = bootstrap_ci(pooled, "mean", resamples, seed=0) if pooled else (None, None)
        dev_mean, dev_sd = _mean_sd([m.dev for m in members])
        test_mean, test_sd = _mean_sd([m.test for m in members])
        final = max(members, key=lambda m: m.dev if m.dev is not None else float("-inf"))
        out[seed] = {"k": k, "folds_run": [m.fold for m in members], "complete": len(members) == k,
                     "per_fold": [{"fold": m.fold, "dev": m.dev, "test": m.test, "dev_n": len(m.run.dev.rows),
                                   "run_dir": str(m.run.path), "leakage": (m.run.manifest.get("dataset") or {})
                                   .get("leakage") or _leakage(m.run)} for m in members],
                     "dev_mean": dev_mean, "dev_sd": dev_sd, "test_mean": test_mean, "test_sd": test_sd,
                     "oof": {"mean": statistics.fmean(pooled) if pooled else None, "ci_low": low, "ci_high": high,
                             "n": len(pooled)},
                     "final": {"rule": FINAL_RULE, "fold": final.fold, "dev": final.dev, "test": final.test}}
    return out


def _leakage(run: Run) -> dict[str, Any] | None:
    """The leakage checks of the dataset a run trained on (its dataset manifest)."""
    import json

    folder = (run.manifest.get("dataset") or {}).get("dir")
    path = Path(folder) / "manifest.json" if folder else None
    if path is not None and path.is_file():
        return json.loads(path.read_text(encoding="utf-8")).get("leakage")
    return None


def seed_summary(variant: Variant) -> dict[str, Any] | None:
    """Mean ± sd over seeds (of each seed's mean over its folds, or its one run) beside the bootstrap interval."""
    seeds = sorted({m.seed for m in variant.members})
    if len(seeds) < 2:
        return None
    split = "test" if all(m.test is not None for m in variant.members) else "dev"
    per_seed = {}
    widths = []
    for seed in seeds:
        members = [m for m in variant.members if m.seed == seed]
        per_seed[seed] = statistics.fmean([(m.test if split == "test" else m.dev) or 0.0 for m in members])
        for m in members:
            scored = m.run.main if split == "test" else m.run.dev
            stats = (scored.aggregate.get("metrics") or {}).get(COMPOSITE) or {}
            if stats.get("ci_low") is not None:
                widths.append(stats["ci_high"] - stats["ci_low"])
    mean, sd = _mean_sd(list(per_seed.values()))
    width = statistics.fmean(widths) if widths else None
    wider = None if width is None else ("seeds (±sd)" if 2 * (sd or 0.0) > width else "bootstrap interval")
    return {"split": split, "per_seed": per_seed, "mean": mean, "sd": sd, "bootstrap_width": width,
            "sd_width": 2 * (sd or 0.0), "wider": wider}


def paired_variants(variants: list[Variant], resamples: int) -> list[dict[str, Any]]:
    """Each variant against the first on the items both answered, paired on (seed, fold, question)."""
    def items(variant: Variant, split: str) -> dict[tuple, float]:
        out = {}
        for m in variant.members:
            scored = m.run.main if split == "test" else m.run.dev
            if split == "test" and scored.split != "test":
                continue
            out.update({(m.seed, m.fold, key): value for key, value in _composites(scored).items()})
        return out

    results = []
    if len(variants) < 2:
        return results
    base = variants[0]
    for variant in variants[1:]:
        for split in ("test", "dev"):
            a, b = items(variant, split), items(base, split)
            shared = sorted(set(a) & set(b), key=str)
            if shared:
                stats = paired_bootstrap([a[k] for k in shared], [b[k] for k in shared], resamples)
                results.append({"variant": variant.label, "baseline": base.label, "split": split,
                                "pairs": len(shared), **stats})
    return results


# ---------------------------------------------------------------- the report's study section

def study_section(runs: list[Run], resamples: int) -> tuple[list[Block], dict[str, Any]]:
    """Blocks and numbers for the variants of a study (empty when no variant has several members)."""
    variants = group_variants(runs)
    if all(len(v.members) < 2 for v in variants):
        return [], {}
    blocks: list[Block] = [("h", 2, "Study: variants over folds and seeds"),
                           ("p", f"Runs grouped by the config keys that differ ({', '.join(STUDY_AXES)} are the "
                                 "study's axes, not variants). Scores are each run's `eval.select_by` on its best "
                                 "checkpoint.")]
    numbers: dict[str, Any] = {"variants": []}
    rows = []
    for v in variants:
        folds, seeds = fold_summary(v, resamples), seed_summary(v)
        numbers["variants"].append({"label": v.label, "keys": v.keys, "members": len(v.members),
                                    "folds": folds, "seeds": seeds})
        for seed, f in (folds or {}).items():
            blocks.append(("h", 3, f"{v.label}: {f['k']}-fold by document, seed {seed}"))
            blocks.append(("table", ["fold", "dev questions", "best on dev", "its test score", "leakage checks"],
                           [[p["fold"], p["dev_n"], fmt(p["dev"]), fmt(p["test"]), _leak_cell(p["leakage"])]
                            for p in f["per_fold"]]))
            oof = f["oof"]
            blocks.append(("ul", [
                f"folds run: {len(f['folds_run'])} of {f['k']}" + ("" if f["complete"] else " (incomplete: the "
                                                                    "pooled score misses the other folds)"),
                f"best on dev, mean ± sd over folds: {fmt(f['dev_mean'])} ± {fmt(f['dev_sd'])}",
                f"pooled out-of-fold ({oof['n']} questions, each answered by the fold model that did not train on "
                f"it): **{fmt(oof['mean'])}** [{fmt(oof['ci_low'])}, {fmt(oof['ci_high'])}] (checkpoints were "
                "picked on these questions: optimistic)",
                f"test, mean ± sd over fold models: {fmt(f['test_mean'])} ± {fmt(f['test_sd'])}",
                f"final choice ({f['final']['rule']}): fold {f['final']['fold']}, test **{fmt(f['final']['test'])}**"]))
        rows.append([v.label, len(v.members), *_seed_cells(seeds)])
    folded = [(v["label"], seed, f) for v in numbers["variants"] for seed, f in (v["folds"] or {}).items()]
    if folded:
        blocks.append(("img", "study_folds.png", "per-fold scores and the pooled out-of-fold score",
                       plot_folds(folded)))
    blocks.append(("h", 3, "Seeds"))
    blocks.append(("table", ["variant", "runs", "split", "mean ± sd over seeds", "mean bootstrap 95% width",
                             "wider"], rows))
    paired = paired_variants(variants, resamples)
    numbers["paired"] = paired
    if paired:
        blocks.append(("h", 3, f"Variants against {variants[0].label}, paired on (seed, fold, question)"))
        blocks.append(("table", ["variant", "split", "pairs", "Δ composite", "95% CI", "p"],
                       [[p["variant"], p["split"], p["pairs"], fmt(p["diff"], signed=True),
                         f"[{fmt(p['ci_low'], True)}, {fmt(p['ci_high'], True)}]", fmt_p(p["p_value"])]
                        for p in paired]))
    return blocks, numbers


def _leak_cell(leakage: dict[str, Any] | None) -> str:
    if not leakage:
        return "–"
    checks = {k: v for k, v in leakage.items() if isinstance(v, bool)}
    return "all pass" if all(checks.values()) else "FAIL: " + ", ".join(k for k, v in checks.items() if not v)


def _seed_cells(seeds: dict[str, Any] | None) -> list[str]:
    if not seeds:
        return ["–", "one seed", "–", "–"]
    return [seeds["split"], f"{fmt(seeds['mean'])} ± {fmt(seeds['sd'])} ({len(seeds['per_seed'])} seeds)",
            fmt(seeds["bootstrap_width"]), seeds["wider"] or "–"]


# ---------------------------------------------------------------- the search (Optuna) page

def search_dbs(targets: list[str | Path]) -> list[Path]:
    """``optuna.db`` files of the search dirs among ``targets`` (globs expanded)."""
    return [match / "optuna.db" for match in _expand(targets) if (match / "optuna.db").is_file()]


def load_trials(db: Path) -> list[dict[str, Any]]:
    """Every trial of every study in an Optuna SQLite file, with its run dir where one is left."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db}"
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.trials:
            run_dir = next(iter(sorted(db.parent.glob(f"{trial.number}_*"))), None)
            rows.append({"study": summary.study_name, "number": trial.number, "state": trial.state.name,
                         "value": trial.value, "params": dict(trial.params),
                         "log_params": [k for k, d in trial.distributions.items() if getattr(d, "log", False)],
                         "interrupted": bool(trial.user_attrs.get("interrupted")),
                         "run_dir": str(run_dir) if run_dir else None})
    return rows


def search_page(db: Path, out: Path) -> Path:
    """Write ``study.md``, ``study.html`` and ``study_params.png`` for one search into ``out``."""
    from patentqa.tracking import write_json_atomic

    trials = load_trials(db)
    names = sorted({k for t in trials for k in t["params"]})
    done = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    best = max(done, key=lambda t: t["value"]) if done else None
    counts = {state: sum(t["state"] == state for t in trials) for state in sorted({t["state"] for t in trials})}
    title = f"Search: {', '.join(sorted({t['study'] for t in trials})) or db.parent.name}"
    blocks: list[Block] = [
        ("h", 1, title),
        ("p", f"Optuna study in `{db}` (Hydra's Optuna sweeper, resumable: a killed trial is marked FAIL as "
              "`interrupted` and rerun with its parameters). Objective: the best checkpoint's dev score."),
        ("ul", [f"trials: {len(trials)} ({', '.join(f'{n} {s.lower()}' for s, n in counts.items())}); "
                f"interrupted: {sum(t['interrupted'] for t in trials)}"]),
        ("h", 2, "Best trial"),
        ("p", "No trial completed." if best is None else
         f"Trial {best['number']}: objective **{fmt(best['value'])}** with "
         + ", ".join(f"`{k}={v:.4g}`" if isinstance(v, float) else f"`{k}={v}`" for k, v in best["params"].items())
         + (f" (`{best['run_dir']}`)" if best["run_dir"] else "")),
        ("h", 2, "Trials"),
        ("table", ["trial", "state", *names, "objective", "run dir"],
         [[t["number"], t["state"].lower() + (" (interrupted)" if t["interrupted"] else ""),
           *(f"{t['params'][k]:.4g}" if isinstance(t["params"].get(k), float) else t["params"].get(k, "–")
             for k in names), fmt(t["value"]), Path(t["run_dir"]).name if t["run_dir"] else "–"] for t in trials]),
        ("h", 2, "Objective against each parameter"),
        ("img", "study_params.png", "objective against each parameter", plot_params(trials))]
    path = write_document(Path(out), "study", blocks, title)
    write_json_atomic(Path(out) / "study.json", {"db": str(db), "trials": trials, "best": best})
    return path
