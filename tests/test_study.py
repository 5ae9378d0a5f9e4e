"""Study aggregation (``patentqa.eval.study``) on run dirs laid out as a K-fold × seeds study, planted scores.

Two variants (LoRA rank 8 and 16), 3 folds × 2 seeds each. Every answer is either the gold or
shares no character with it, so each item's composite is exactly 1 or 0 and every aggregate is
known: fold f's dev holds 10 questions of its own (ids ``f{f}-{i}``), the best checkpoint answers
``RIGHT[rank][seed][f]`` of them; the fold model answers ``TEST_RIGHT[rank][seed][f]`` of the 20
shared test questions.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from patentqa.eval.report import build_report
from patentqa.eval.study import FINAL_RULE, find_runs
from patentqa.tracking import write_json_atomic
from test_report import GOLD, _write_split

WRONG = "ＸＹＺ"  # no character in common with any gold answer
K, DEV_N, TEST_N = 3, 10, 20
RIGHT = {8: {0: [4, 6, 8], 1: [5, 6, 7]}, 16: {0: [6, 8, 9], 1: [7, 7, 9]}}
TEST_RIGHT = {8: {0: [10, 12, 11], 1: [9, 13, 12]}, 16: {0: [14, 15, 12], 1: [16, 13, 14]}}


def _items(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "document": f"{prefix}.pdf", "question": f"问题{i}", "kind": "document",
             "form": "document", "pages": [1], "answer": GOLD[i % len(GOLD)]} for i in range(n)]


def _answers(items: list[dict[str, Any]], right: int) -> list[str]:
    return [it["answer"] if i < right else WRONG for i, it in enumerate(items)]


def make_member(root: Path, job: int, rank: int, seed: int, fold: int) -> Path:
    """Job ``job`` of a multirun: a sweep with checkpoint-10 (worse) and checkpoint-20 (best on dev)."""
    run_dir = root / f"{job}_smoke-main"
    run_dir.mkdir(parents=True)
    def config_of(synth_seed: Any, data_dir: str) -> dict[str, Any]:
        return {"name": "smoke", "seed": seed, "train": {"lora_rank": rank}, "paths": {"root": str(root)},
                "data": {"folds": K, "fold": fold, "dir": data_dir, "synth": {"seed": synth_seed}},
                "infer": {"max_new_tokens": 16}}

    # config.yaml is resolved: the synthetic set's seed and dir follow the run's seed; Hydra's
    # .hydra/config.yaml keeps the interpolations, which are the same in every run
    config = config_of(seed, f"{root}/data/synthetic-s{seed}")
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(
        config_of("${seed}", "${paths.root}/data/synthetic-s${data.synth.seed}"))), encoding="utf-8")
    leakage = {"documents_disjoint": True, "no_heldout_question_in_train": True, "same_text_other_documents": 0}
    write_json_atomic(run_dir / "manifest.json", {"state": "succeeded", "name": "smoke", "config": config,
                                                  "dataset": {"leakage": leakage}})
    dev, test = _items(f"f{fold}-", DEV_N), _items("t", TEST_N)
    right = RIGHT[rank][seed][fold]
    checkpoints = [{"name": f"checkpoint-{s}", "step": s, "path": str(run_dir / f"swift/checkpoint-{s}"),
                    "dev": _write_split(run_dir, "dev", f"checkpoint-{s}", s, dev, _answers(dev, r))}
                   for s, r in ((10, right - 2), (20, right))]
    best = checkpoints[1]
    best_test = _write_split(run_dir, "test", best["name"], 20, test, _answers(test, TEST_RIGHT[rank][seed][fold]))
    write_json_atomic(run_dir / "eval" / "sweep.json", {
        "run_dir": str(run_dir), "name": "smoke", "select_by": "composite", "dev_split_size": DEV_N,
        "test_split_size": TEST_N, "checkpoints": checkpoints, "base": None, "best": {**best, "test": best_test}})
    return run_dir


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("multirun") / "2026-12-02_10-00-00"
    job = 0
    for rank in (8, 16):
        for seed in (0, 1):
            for fold in range(K):
                make_member(root, job, rank, seed, fold)
                job += 1
    (root / "12_smoke-main").mkdir()           # a member killed before its sweep
    (root / "12_smoke-main" / "manifest.json").write_text("{}", encoding="utf-8")
    runs, skipped = find_runs([str(root)])
    out = tmp_path_factory.mktemp("report")
    import json

    build_report(runs, runs[0], out, "Study", resamples=2000)
    return out, {"runs": runs, "skipped": skipped, "json": json.loads((out / "report.json").read_text("utf-8"))}


def _variant(numbers: dict[str, Any], rank: int) -> dict[str, Any]:
    return next(v for v in numbers["json"]["study"]["variants"] if v["keys"] == {"train.lora_rank": str(rank)})


def test_a_multirun_dir_is_read_whole(study) -> None:
    _, numbers = study
    assert len(numbers["runs"]) == 12 and [p.name for p in numbers["runs"]][:2] == ["0_smoke-main", "1_smoke-main"]
    assert len(numbers["skipped"]) == 1 and "12_smoke-main" in numbers["skipped"][0]
    variants = numbers["json"]["study"]["variants"]
    assert [v["label"] for v in variants] == ["train.lora_rank=8", "train.lora_rank=16"]  # seed, fold: axes
    assert all(v["members"] == 6 for v in variants)


@pytest.mark.parametrize("rank", [8, 16])
def test_folds_per_fold_mean_sd_pooled_and_final(study, rank: int) -> None:
    _, numbers = study
    for seed in (0, 1):
        f = _variant(numbers, rank)["folds"][str(seed)]
        dev = [r / DEV_N for r in RIGHT[rank][seed]]
        test = [r / TEST_N for r in TEST_RIGHT[rank][seed]]
        assert [p["dev"] for p in f["per_fold"]] == pytest.approx(dev)
        assert [p["test"] for p in f["per_fold"]] == pytest.approx(test)
        assert [p["dev_n"] for p in f["per_fold"]] == [DEV_N] * K and f["complete"]
        assert f["dev_mean"] == pytest.approx(statistics.fmean(dev))
        assert f["dev_sd"] == pytest.approx(statistics.stdev(dev))
        oof = f["oof"]
        assert oof["n"] == K * DEV_N and oof["mean"] == pytest.approx(sum(RIGHT[rank][seed]) / (K * DEV_N))
        assert oof["ci_low"] < oof["mean"] < oof["ci_high"]
        best = max(range(K), key=lambda k: dev[k])
        assert f["final"] == {"rule": FINAL_RULE, "fold": best, "dev": pytest.approx(dev[best]),
                              "test": pytest.approx(test[best])}
        assert all(p["leakage"]["documents_disjoint"] for p in f["per_fold"])


def test_seeds_mean_sd_and_which_is_wider(study) -> None:
    _, numbers = study
    seeds = _variant(numbers, 8)["seeds"]
    per_seed = [statistics.fmean(r / TEST_N for r in TEST_RIGHT[8][s]) for s in (0, 1)]
    assert seeds["split"] == "test"
    assert seeds["mean"] == pytest.approx(statistics.fmean(per_seed))
    assert seeds["sd"] == pytest.approx(statistics.stdev(per_seed))
    # planted: the two seeds' test means are 0.550 and 0.567 (sd 0.012, ±sd span 0.024), while one run's
    # bootstrap interval over 20 items scored 0 or 1 at p ~ 0.56 is ~2 x 1.96 x sqrt(p(1-p)/20) ~ 0.43 wide
    assert seeds["sd_width"] == pytest.approx(2 * statistics.stdev(per_seed))
    assert 0.3 < seeds["bootstrap_width"] < 0.55
    assert seeds["wider"] == "bootstrap interval"


def test_variants_paired_on_seed_fold_question(study) -> None:
    _, numbers = study
    paired = {p["split"]: p for p in numbers["json"]["study"]["paired"]}
    assert paired["dev"]["pairs"] == 2 * K * DEV_N   # each (seed, fold) has its own dev questions
    assert paired["test"]["pairs"] == 2 * K * TEST_N  # the same test questions, once per (seed, fold)
    dev_diff = (sum(map(sum, RIGHT[16].values())) - sum(map(sum, RIGHT[8].values()))) / (2 * K * DEV_N)
    assert paired["dev"]["diff"] == pytest.approx(dev_diff) and paired["dev"]["ci_low"] > 0


def test_report_shows_the_study_with_its_plot(study) -> None:
    out, _ = study
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Study: variants over folds and seeds" in md and "3-fold by document, seed 1" in md
    assert "pooled out-of-fold (30 questions" in md and "all pass" in md
    assert "![per-fold scores and the pooled out-of-fold score](study_folds.png)" in md
    assert (out / "study_folds.png").stat().st_size > 5000
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<li>" in html and html.count("data:image/png;base64,") == 4


def test_seeds_far_apart_are_the_wider_spread() -> None:
    """The other side of ``wider``: two seeds whose test means are 0.2 and 0.8 (±sd span 0.85) beside a bootstrap
    interval 0.3 wide."""
    from types import SimpleNamespace

    from patentqa.eval.study import seed_summary

    def member(seed: int, test: float) -> SimpleNamespace:
        aggregate = {"metrics": {"composite": {"ci_low": test - 0.15, "ci_high": test + 0.15}}}
        return SimpleNamespace(seed=seed, test=test, dev=test, run=SimpleNamespace(main=SimpleNamespace(aggregate=aggregate)))
    seeds = seed_summary(SimpleNamespace(members=[member(0, 0.2), member(1, 0.8)]))
    assert seeds["sd_width"] == pytest.approx(2 * statistics.stdev([0.2, 0.8]))
    assert seeds["bootstrap_width"] == pytest.approx(0.3) and seeds["wider"] == "seeds (±sd)"
