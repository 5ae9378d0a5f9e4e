"""Answer metrics against an outside oracle (AGCUT's 500 scored pairs) and hand-computed values;
aggregation, bootstrap, the composite presets and the ``patentqa.eval.score`` CLI."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from patentqa.eval import aggregate as A
from patentqa.eval import metrics as M
from patentqa.eval.score import main as score_main
from patentqa.eval.score import output_paths, score_file

ALL = ["char_f1", "char_rouge_l", "exact_match", "exact_match_agcut", "word_rouge1", "word_rouge_l"]


@pytest.fixture(scope="module")
def oracle(reference: Path) -> list[dict[str, str]]:
    path = reference / "agcut_round_b_eval_500.csv"
    with open(path, encoding="utf-8-sig", newline="") as handle:  # the file opens with a BOM
        rows = list(csv.DictReader(handle))
    assert len(rows) == 500
    return rows


def test_char_f1_reproduces_oracle_rouge1(oracle: list[dict[str, str]]) -> None:
    for row in oracle:
        assert M.char_f1(row["pred"], row["gold"]) == pytest.approx(float(row["rouge1_f1"]), abs=1e-9), row["idx"]


def test_agcut_em_reproduces_oracle_and_ours_differs_only_on_whitespace(oracle: list[dict[str, str]]) -> None:
    for row in oracle:
        assert M.exact_match_agcut(row["pred"], row["gold"]) == pytest.approx(float(row["exact_match"]), abs=1e-9)
    differ = [row["idx"] for row in oracle if M.exact_match(row["pred"], row["gold"]) != float(row["exact_match"])]
    # 'IEEE802.15.4' vs 'IEEE 802.15.4': AGCUT keeps inner whitespace; ours (like char_f1) drops it
    assert differ == ["445"]


def test_agcut_preset_reproduces_oracle_final_score(oracle: list[dict[str, str]]) -> None:
    weights = M.resolve_weights("agcut")
    for row in oracle:
        scores = {"bertscore": float(row["bert_score_f1"]), "char_f1": M.char_f1(row["pred"], row["gold"]),
                  "exact_match_agcut": M.exact_match_agcut(row["pred"], row["gold"])}
        assert M.composite(scores, weights) == pytest.approx(float(row["final_score"]), abs=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_identical_disjoint_empty(name: str) -> None:
    fn = M.get_metric(name).fn
    assert fn("部件6位于部件14的下方", "部件6位于部件14的下方") == 1.0
    assert fn("底座", "螺杆") == 0.0
    assert fn("", "底座") == 0.0 and fn("   ", "底座") == 0.0


def test_partial_overlap_by_hand() -> None:
    # pred "用于快速定位" (6 chars), gold "用于U肋的快速组装定位" (11 chars)
    # unigram overlap: 用 于 快 速 定 位 = 6 → P = 6/6, R = 6/11, F1 = 2·1·(6/11)/(1 + 6/11) = 12/17
    assert M.char_f1("用于 快速定位", "用于U肋的快速组装定位") == pytest.approx(12 / 17)
    # pred "定位快速" vs gold "快速组装定位": overlap {快,速,定,位} = 4 → P = 4/4, R = 4/6, F1 = 0.8;
    # LCS = "快速" or "定位" = 2 → P = 2/4, R = 2/6, F1 = 2·(1/2)(1/3)/(1/2 + 1/3) = 0.4
    assert M.char_f1("定位快速", "快速组装定位") == pytest.approx(0.8)
    assert M.char_rouge_l("定位快速", "快速组装定位") == pytest.approx(0.4)
    # repeated characters count as a multiset: pred "aab", gold "ab" → overlap 2, P = 2/3, R = 1, F1 = 0.8
    assert M.char_f1("aab", "ab") == pytest.approx(0.8)


def test_exact_match_normalisation() -> None:
    assert M.exact_match("ＩＥＥＥ 802.15.4。", "ieee802.15.4") == 1.0       # NFKC, case, space, punctuation
    assert M.exact_match("位移驱动器（6）", "位移驱动器(6)") == 1.0
    assert M.exact_match("。", "。") == 0.0                                     # nothing left to match
    assert M.exact_match_agcut("IEEE802.15.4", "IEEE 802.15.4") == 0.0          # AGCUT: inner space counts
    assert M.exact_match_agcut("Ａ", "a") == 0.0                                 # AGCUT: no NFKC


def test_word_rouge_uses_jieba_on_chinese() -> None:
    # rouge_score's default tokenizer would turn both into no tokens and score 0
    tokens = M.JiebaTokenizer().tokenize("通过烟雾温度传感头感应高温")
    assert len(tokens) > 1 and "烟雾" in tokens
    assert 0.0 < M.word_rouge1("烟雾温度传感头", "通过烟雾温度传感头感应高温") < 1.0
    assert 0.0 < M.word_rouge_l("烟雾温度传感头", "通过烟雾温度传感头感应高温") < 1.0


def test_composite_weights() -> None:
    scores = {"char_f1": 0.8, "char_rouge_l": 0.4, "exact_match": 1.0}
    assert M.composite(scores, M.resolve_weights("default")) == pytest.approx(0.6)
    assert M.composite(scores, M.resolve_weights({"char_f1": 3, "exact_match": 1})) == pytest.approx(0.85)
    with pytest.raises(ValueError, match="unknown composite preset"):
        M.resolve_weights("nope")


def test_agcut_preset_without_bertscore_fails_clearly() -> None:
    M.configure_bertscore(None)
    assert "bertscore" not in M.available_metrics()
    with pytest.raises(M.MetricUnavailable, match="bertscore"):
        M.composite({"char_f1": 1.0, "exact_match_agcut": 1.0}, M.resolve_weights("agcut"))
    with pytest.raises(M.MetricUnavailable, match="eval.bertscore.model_path"):
        M.score_items([{"prediction": "a", "answer": "a"}], ["char_f1"], M.resolve_weights("agcut"))


def test_bertscore_configured_but_package_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "bert_score", None)  # find_spec → None: as if not installed
    with pytest.raises(M.MetricUnavailable, match="pip install bert-score"):
        M.configure_bertscore(str(tmp_path))
    with pytest.raises(M.MetricUnavailable, match="not a directory"):
        M.configure_bertscore(str(tmp_path / "absent"))
    assert "bertscore" not in M.available_metrics()


def test_empty_predictions_are_counted() -> None:
    items = [{"prediction": "底座", "answer": "底座", "kind": "document"},
             {"prediction": "", "answer": "底座", "kind": "document"},
             {"prediction": "螺杆", "answer": "螺杆", "kind": "figure_other"}]
    rows = M.score_items(items, ["char_f1", "exact_match"], M.resolve_weights("default"))
    assert [r["empty"] for r in rows] == [False, True, False]
    assert rows[1]["scores"] == {"char_f1": 0.0, "exact_match": 0.0, "char_rouge_l": 0.0, "composite": 0.0}
    agg = A.aggregate(rows, by="kind", resamples=200)
    assert (agg["n"], agg["n_empty"]) == (3, 1)
    assert agg["metrics"]["char_f1"]["mean"] == pytest.approx(2 / 3)
    assert agg["groups"]["document"]["n"] == 2 and agg["groups"]["document"]["n_empty"] == 1
    assert agg["groups"]["document"]["metrics"]["char_f1"]["mean"] == pytest.approx(0.5)
    assert A.headline(agg)["kind=figure_other/composite"] == 1.0


def test_bootstrap_ci_contains_mean_and_is_seeded() -> None:
    values = [((i * 37) % 101) / 100 for i in range(300)]
    mean = sum(values) / len(values)
    low, high = A.bootstrap_ci(values, resamples=2000, seed=7)
    assert low < mean < high and high - low < 0.2
    assert A.bootstrap_ci(values, resamples=2000, seed=7) == (low, high)
    assert A.bootstrap_ci(values, resamples=2000, seed=8) != (low, high)
    assert A.bootstrap_ci([0.5], resamples=100) == (0.5, 0.5)


def test_paired_bootstrap() -> None:
    a = [((i * 13) % 7) / 7 for i in range(200)]
    same = A.paired_bootstrap(a, list(a), resamples=2000, seed=0)
    assert same["diff"] == 0.0 and same["ci_low"] == same["ci_high"] == 0.0 and same["p_value"] == pytest.approx(1.0)
    better = [min(1.0, x + 0.2) for x in a]
    result = A.paired_bootstrap(better, a, resamples=2000, seed=0)
    assert result["diff"] > 0.1 and result["ci_low"] > 0 and result["p_value"] < 0.05
    assert A.paired_bootstrap(better, a, resamples=2000, seed=0) == result
    with pytest.raises(ValueError):
        A.paired_bootstrap([1.0], [1.0, 0.0])


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_cli_scores_file_and_reports_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = [{"id": "q1", "kind": "document", "prediction": "自动控制", "answer": "自动控制"},
            {"id": "q2", "kind": "figure_position", "prediction": "", "answer": "位于其左侧"},
            {"id": "q3", "kind": "document", "prediction": "用于 快速定位", "answer": "用于U肋的快速组装定位"}]
    no_prediction = json.dumps({"id": "q9", "answer": "底座"})
    lines = [json.dumps(good[0], ensure_ascii=False), "{not json", no_prediction,
             json.dumps(good[1], ensure_ascii=False), "", json.dumps(good[2], ensure_ascii=False)]
    path = _write(tmp_path / "predictions.jsonl", lines)
    assert score_main([f"predictions={path}", "metrics=[char_f1,exact_match]", "resamples=100"]) == 0
    out, err = capsys.readouterr()
    assert f"{path}:2: not JSON" in err and f"{path}:3: no 'prediction' field" in err
    assert "kind=document" in out and "n_empty" in out and "bad lines: 2" in out
    scores_path, metrics_path = output_paths(path)
    assert scores_path.name == "predictions.scores.jsonl" and metrics_path.name == "predictions.metrics.json"
    rows = [json.loads(line) for line in scores_path.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["line"]) for r in rows] == [("q1", 1), ("q2", 4), ("q3", 6)]
    assert rows[2]["scores"]["char_f1"] == pytest.approx(12 / 17)
    record = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert record["n_bad"] == 2 and [b["line"] for b in record["bad_lines"]] == [2, 3]
    agg = record["aggregate"]
    assert (agg["n"], agg["n_empty"]) == (3, 1) and set(agg["groups"]) == {"document", "figure_position"}
    third = (12 / 17 + M.char_rouge_l("用于快速定位", "用于U肋的快速组装定位")) / 2  # composite of q3
    assert agg["metrics"]["composite"]["mean"] == pytest.approx((1 + 0 + third) / 3)


def test_cli_nothing_scoreable_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "p.jsonl", ['{"prediction": "a"}', "[1, 2]"])
    assert score_main([f"predictions={path}"]) == 1
    assert "nothing could be scored" in capsys.readouterr().err
    assert score_main([f"predictions={tmp_path / 'missing.jsonl'}"]) == 1
    with pytest.raises(SystemExit) as exit_info:
        score_main([f"predictions={path}", "resamples=many"])
    assert exit_info.value.code == 2


def test_score_file_matches_oracle_means(oracle: list[dict[str, str]], tmp_path: Path) -> None:
    path = _write(tmp_path / "agcut.jsonl", [json.dumps({"id": r["idx"], "prediction": r["pred"], "answer": r["gold"]},
                                                        ensure_ascii=False) for r in oracle])
    record = score_file(path, ["char_f1", "exact_match_agcut"], "default", resamples=200)
    metrics = record["aggregate"]["metrics"]
    assert metrics["char_f1"]["mean"] == pytest.approx(sum(float(r["rouge1_f1"]) for r in oracle) / 500, abs=1e-12)
    assert metrics["exact_match_agcut"]["mean"] == pytest.approx(135 / 500)
    assert record["aggregate"]["groups"] == {}
