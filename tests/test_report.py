"""The ablation report (``patentqa.eval.report``) on a synthetic sweep layout with planted differences.

The fixture writes what ``patentqa.eval.sweep`` leaves in a run dir — ``manifest.json``,
``config.yaml``, ``eval/sweep.json``, ``eval/{dev,test}/{checkpoint-N,base}/`` with
``predictions.jsonl`` scored by the real ``score_file`` — for four runs:

- ``baseline``: even test items exactly right, odd ones half right; best on dev: checkpoint-30.
- ``better``:   every test item right except the planted regression ``t04`` (a wrong answer), one
                 empty prediction (``t11``), one truncated raw answer (``t06``) and one far-too-long
                 answer that hit the style pass's limit (``t05``); best on dev: checkpoint-20 (not the last one).
- ``copy``:     the baseline's predictions again (paired difference exactly 0).
- ``notest``:   no test split (the sweep's ``best.test`` is null).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from patentqa.eval.aggregate import headline
from patentqa.eval.render import fmt_ci
from patentqa.eval.report import build_report, main
from patentqa.eval.runs import NO_TEST
from patentqa.eval.score import score_file
from patentqa.tracking import write_json_atomic

KINDS = ("document", "figure_other", "figure_position")
GOLD = ["螺栓连接", "齿轮传动机构", "位于底座上方", "电动机", "焊接固定", "弹簧", "左侧", "散热片",
        "控制电路板", "通过铰链转动连接", "密封圈", "上方", "进料斗", "皮带轮", "支撑架", "右下方",
        "减速器", "导轨", "滑块", "农业机械领域"]
PLANTED = "t04"                   # right in the baseline, wrong in `better`
PLANTED_WRONG = "完全不同的回答"   # shares no character with GOLD[4]
MAX_NEW_TOKENS = 16
STYLE_MAX_NEW_TOKENS = 9
STEPS = (10, 20, 30)


def _items(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i:02d}", "document": f"CN{i:03d}.pdf", "question": f"问题{i}：部件{i}是什么？",
             "kind": KINDS[i % 3], "form": "document", "pages": [1], "answer": GOLD[i % len(GOLD)]}
            for i in range(n)]


def _write_split(run_dir: Path, split: str, name: str, step: int, items: list[dict[str, Any]],
                 predictions: list[str], raw: dict[int, str] | None = None) -> dict[str, Any]:
    """predictions.jsonl → scores.jsonl + metrics.json, as the sweep writes them."""
    out = run_dir / "eval" / split / name
    out.mkdir(parents=True, exist_ok=True)
    records = [{**item, "prediction": p, "raw_answer": (raw or {}).get(i, p), "styled_answer": p}
               for i, (item, p) in enumerate(zip(items, predictions))]
    (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                           encoding="utf-8")
    record = score_file(out / "predictions.jsonl", ["char_f1", "char_rouge_l", "exact_match"], "default", "kind",
                        resamples=200, scores_path=out / "scores.jsonl", metrics_path=out / "metrics.json")
    record.update(split=split, checkpoint=name, step=step, headline=headline(record["aggregate"]))
    write_json_atomic(out / "metrics.json", record)
    return record["headline"]


def _dev_predictions(items: list[dict[str, Any]], n_right: int) -> list[str]:
    return [it["answer"] if i < n_right else it["answer"][:1] + "某某" for i, it in enumerate(items)]


def make_run(root: Path, name: str, dev_right: dict[int, int], test_predictions: list[str] | None,
             lora_rank: int = 8, base: bool = False, raw: dict[int, str] | None = None) -> Path:
    """One run dir in the sweep's layout; returns it."""
    run_dir = root / name / "2026-01-01_00-00-00"
    run_dir.mkdir(parents=True)
    dev, test = _items("d", 12), _items("t", 20)
    config = {"name": name, "tags": [name, "fixture"], "model": {"name": "tiny", "path": "./tiny"},
              "train": {"lora_rank": lora_rank, "lora_alpha": 4 * lora_rank},
              "retrieval": {"name": "gme", "k": 2}, "prompt": {"name": "seed_b"},
              "pipeline": {"router": "rules", "style_pass": True, "cleanup": True,
                           "style_max_new_tokens": STYLE_MAX_NEW_TOKENS},
              "infer": {"name": "transformers", "max_new_tokens": MAX_NEW_TOKENS}, "paths": {"root": str(root)}}
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    write_json_atomic(run_dir / "manifest.json", {
        "state": "succeeded", "name": name, "git": {"sha": "0123456789abcdef0123", "dirty": name == "better"},
        "versions": {"ms-swift": "4.6.0", "transformers": "5.19.0"},
        "dataset": {"manifest_sha256": "feedc0ffee" + "0" * 54}, "config": config})
    checkpoints = [{"name": f"checkpoint-{s}", "step": s, "path": str(run_dir / f"swift/checkpoint-{s}"),
                    "dev": _write_split(run_dir, "dev", f"checkpoint-{s}", s, dev, _dev_predictions(dev, dev_right[s]))}
                   for s in STEPS]
    best = max(checkpoints, key=lambda c: c["dev"]["composite"])
    best_test = None
    if test_predictions is not None:
        best_test = _write_split(run_dir, "test", best["name"], best["step"], test, test_predictions, raw)
    base_record = None
    if base:
        base_record = {"dev": _write_split(run_dir, "dev", "base", 0, dev, ["不知道"] * len(dev)),
                       "test": _write_split(run_dir, "test", "base", 0, test, ["不知道"] * len(test))}
    write_json_atomic(run_dir / "eval" / "sweep.json", {
        "run_dir": str(run_dir), "name": name, "select_by": "composite", "eval_key": "samekey",
        "dev_split_size": len(dev), "test_split_size": len(test) if test_predictions is not None else 0,
        "checkpoints": checkpoints, "base": base_record, "best": {**best, "test": best_test}})
    return run_dir


def _baseline_predictions() -> list[str]:
    return [g if i % 2 == 0 else g[: max(1, len(g) // 2)] for i, g in enumerate(GOLD)]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    better = list(GOLD)
    better[4] = PLANTED_WRONG          # the planted regression
    better[5] = GOLD[5] * 5            # far too long; 10 characters: hits only the style pass's limit
    better[11] = ""                    # empty
    return {
        "baseline": make_run(root, "baseline", {10: 3, 20: 5, 30: 6}, _baseline_predictions(), base=True),
        "better": make_run(root, "better", {10: 4, 20: 10, 30: 7}, better, lora_rank=16,
                           raw={6: "很长的原始回答" * 5}),  # ≥ MAX_NEW_TOKENS characters: hit the limit
        "copy": make_run(root, "copy", {10: 3, 20: 5, 30: 6}, _baseline_predictions()),
        "notest": make_run(root, "notest", {10: 8, 20: 6, 30: 2}, None),
    }


@pytest.fixture(scope="module")
def report(layout: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    build_report(list(layout.values()), layout["baseline"], out, "Fixture report", resamples=2000)
    return out


def _row(md: str, section: str, label: str) -> str:
    """The table row of ``label`` inside the section that starts with heading ``section``."""
    body = md.split(section, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith(f"| {label} |")]
    assert rows, f"no row {label!r} under {section!r}"
    return rows[0]


def test_files_exist(report: Path) -> None:
    for name in ("report.md", "report.html", "report.json", "dev_curves.png", "composite_by_run.png",
                 "composite_per_kind.png"):
        assert (report / name).is_file(), name


def test_provenance(report: Path, layout: dict[str, Path]) -> None:
    md = (report / "report.md").read_text(encoding="utf-8")
    prov = md.split("## Provenance", 1)[1].split("\n## ", 1)[0]
    assert str(layout["better"]) in prov
    assert "`0123456789` (dirty)" in prov and "`0123456789` (clean)" in prov
    assert "4.6.0 / 5.19.0" in prov and "`feedc0ffee000000`" in prov
    assert "12 / 20" in prov and "12 / 0" in prov            # split sizes dev / test
    assert "better, fixture" in prov and "router=rules, style pass on, cleanup on" in prov
    assert re.search(r"\| `train.lora_rank` \| 8 \| 16 \| 8 \| 8 \|", prov)  # what differs between the runs


def test_main_table_best_checkpoint_on_test(report: Path, layout: dict[str, Path]) -> None:
    md = (report / "report.md").read_text(encoding="utf-8")
    section = "## Results"
    for name, best in (("better", "checkpoint-20"), ("baseline", "checkpoint-30")):
        metrics = json.loads((layout[name] / "eval" / "test" / best / "metrics.json").read_text(encoding="utf-8"))
        row = _row(md, section, name)
        assert f"| {best} (" in row and "| test |" in row
        for metric in ("composite", "char_f1", "char_rouge_l", "exact_match"):
            assert fmt_ci(metrics["aggregate"]["metrics"][metric]) in row, metric
    assert "| test |" in _row(md, section, "baseline: base model")
    assert "baseline" in md and "copy: base model" not in md   # one base row per evaluation setting


def test_run_without_test_is_labelled(report: Path, layout: dict[str, Path]) -> None:
    md = (report / "report.md").read_text(encoding="utf-8")
    row = _row(md, "## Results", "notest")
    assert f"| {NO_TEST} |" in row and "| checkpoint-10 (10) |" in row
    assert "**No test split** for notest" in md
    dev = json.loads((layout["notest"] / "eval" / "dev" / "checkpoint-10" / "metrics.json").read_text())
    assert fmt_ci(dev["aggregate"]["metrics"]["composite"]) in row
    assert f"notest ({NO_TEST})" in md                       # per-kind column header


def test_paired_bootstrap(report: Path) -> None:
    md = (report / "report.md").read_text(encoding="utf-8")
    section = "## Paired differences"
    copy = _row(md, section, "copy")
    assert "| test | 20 |" in copy
    assert copy.count("+0.000 [+0.000, +0.000] p=1.000") == 4
    assert "| dev (a run has no test split) |" in _row(md, section, "notest")
    numbers = json.loads((report / "report.json").read_text(encoding="utf-8"))["paired_vs_baseline"]
    assert numbers["copy"]["metrics"]["composite"]["diff"] == 0
    assert numbers["better"]["metrics"]["composite"]["diff"] > 0


def test_regressions_list_the_planted_item(report: Path) -> None:
    md = (report / "report.md").read_text(encoding="utf-8")
    body = md.split("### better: largest regressions", 1)[1].split("###", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith(f"| {PLANTED} |")]
    assert rows, body
    assert f"| {GOLD[4]} | {GOLD[4]} | {PLANTED_WRONG} | -1.000 |" in rows[0]
    assert "(empty)" in body                                  # the empty prediction is a regression too
    improvements = md.split("### better: largest improvements", 1)[1].split("###", 1)[0]
    assert "| t03 |" in improvements and "+0.500 |" in improvements  # 电 → 电动机
    assert "None: no shared item scored lower" in md.split("### copy: largest regressions", 1)[1]


def test_failure_counts(report: Path) -> None:
    failures = json.loads((report / "report.json").read_text(encoding="utf-8"))["failures"]
    assert failures["better"] == {"n": 20, "empty": 1, "hit_max_tokens": 1, "style_hit_max_tokens": 1,
                                  "far_too_long": 1, "unparsed": None, "no_final_line": None,
                                  "unclosed_think": None, "split": "test", "checkpoint": "checkpoint-20",
                                  "max_chars": MAX_NEW_TOKENS, "style_max_chars": STYLE_MAX_NEW_TOKENS}
    assert failures["baseline"] == {"n": 20, "empty": 0, "hit_max_tokens": 0, "style_hit_max_tokens": 0,
                                    "far_too_long": 0, "unparsed": None, "no_final_line": None,
                                    "unclosed_think": None, "split": "test", "checkpoint": "checkpoint-30",
                                    "max_chars": MAX_NEW_TOKENS, "style_max_chars": STYLE_MAX_NEW_TOKENS}
    md = (report / "report.md").read_text(encoding="utf-8")
    assert f"| better | test | 20 | {MAX_NEW_TOKENS} | 1 (5%) | 1 (5%) | 1 (5%) | 1 (5%) | – | – | – |" in md


def test_html_is_self_contained(report: Path) -> None:
    text = (report / "report.html").read_text(encoding="utf-8")
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text, flags=re.I)
    plots = [link for link in links if link.startswith("data:image/png;base64,")]
    assert len(plots) == 3 and [link for link in links if link not in plots] == ["browse/index.html"]
    assert (report / "browse" / "index.html").is_file()  # the one link: the question browser beside the report
    assert "<link" not in text and "<script" not in text and "url(" not in text and "@import" not in text
    assert "Fixture report" in text and PLANTED_WRONG in text and "<table>" in text


def test_pngs_are_real_plots(report: Path) -> None:
    for name in ("dev_curves.png", "composite_by_run.png", "composite_per_kind.png"):
        with Image.open(report / name) as image:
            image.verify()
        with Image.open(report / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, name


def test_cli(layout: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    argv = [f"runs=[{layout['baseline']},{layout['better']}]", f"baseline={layout['baseline']}", f"out={out}",
            "resamples=500"]
    assert main(argv) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Ablation report: baseline, better")
    assert main([f"runs=[{tmp_path / 'nowhere'}]", f"out={out}"]) == 1


def test_same_experiment_twice_gets_distinct_labels(layout: dict[str, Path], tmp_path: Path) -> None:
    twin = make_run(tmp_path, "baseline", {10: 3, 20: 5, 30: 6}, _baseline_predictions())
    build_report([layout["baseline"], twin], layout["baseline"], tmp_path / "out", resamples=200)
    labels = [r["label"] for r in json.loads((tmp_path / "out" / "report.json").read_text())["runs"]]
    assert len(set(labels)) == 2 and all(label.startswith("baseline/") for label in labels)


def test_a_multirun_over_a_group_is_labelled_by_its_choices(layout: dict[str, Path], tmp_path: Path) -> None:
    """-m +exp=smoke model=tiny,tiny_qwen3_vl: both runs are named smoke; the model tells them apart."""
    twin = make_run(tmp_path, "baseline", {10: 3, 20: 5, 30: 6}, _baseline_predictions())
    config = OmegaConf.load(twin / "config.yaml")
    config.model.name = "tiny_qwen3_vl"
    OmegaConf.save(config, twin / "config.yaml")
    build_report([layout["baseline"], twin], layout["baseline"], tmp_path / "out", resamples=200)
    labels = [r["label"] for r in json.loads((tmp_path / "out" / "report.json").read_text())["runs"]]
    assert labels == ["baseline model=tiny", "baseline model=tiny_qwen3_vl"]


def test_html_in_headless_chromium(report: Path) -> None:
    """The page a person opens: it renders (not blank), every plot loads, the console shows no error."""
    from browser import open_page

    page = open_page(report / "report.html")
    assert page.ink > 0.05, f"screenshot nearly blank: {page.ink:.1%} of pixels inked"
    assert len(page.images) == 3 and not page.broken_images, page.images
    assert page.console_errors == []


def test_browser_checks_can_fail(tmp_path: Path) -> None:
    """The three checks catch what they look for: a blank page, a broken image, a console error."""
    from browser import open_page

    (tmp_path / "blank.html").write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    (tmp_path / "broken.html").write_text(
        '<!DOCTYPE html><html><body><h1>t</h1><img alt="x" src="data:image/png;base64,AAAA">'
        "<script>console.error('boom')</script></body></html>", encoding="utf-8")
    assert open_page(tmp_path / "blank.html").ink < 0.001
    broken = open_page(tmp_path / "broken.html")
    assert len(broken.broken_images) == 1
    assert any("boom" in message for message in broken.console_errors)
