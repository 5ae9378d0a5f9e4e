"""Round A (multiple choice) and reasoning-chain targets: option checks, letter parsing, accuracy,
the synthetic round-A generator, final-answer extraction, chain rejection, and a build with both."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from patentqa.data.chains import FINAL, cot_response, final_answer
from patentqa.eval.chains import accept
from patentqa.data.choices import check_options, parse_choice, split_option
from patentqa.data.corpus import read_split
from patentqa.eval.metrics import COMPOSITE, score_items

OPTIONS = ["A. 在12的上方", "B. 在12的下方", "C. 在12的左侧", "D. 在12的右侧"]


@pytest.mark.parametrize("reply, letter", [
    ("B", "B"), ("B.", "B"), ("b", "B"), ("选B", "B"), ("答案：B", "B"), ("答案: B", "B"), ("Ｂ", "B"),
    ("B. 在12的下方", "B"), ("正确答案是D", "D"), ("在12的左侧", "C"), ("在 12 的左侧。", "C"),
    ("分析：部件3在部件12的下面。\n答案：B", "B"),
])
def test_each_answer_form_parses_to_its_letter(reply: str, letter: str) -> None:
    assert parse_choice(reply, OPTIONS).letter == letter


@pytest.mark.parametrize("reply", ["A或B", "B和C都对", "A. 在12的上方, D", "答案：A，答案：C", "", "不知道", "12的中间"])
def test_a_reply_naming_several_letters_or_none_is_unparsed(reply: str) -> None:
    choice = parse_choice(reply, OPTIONS)
    assert choice.letter is None and choice.how


def test_option_checks_say_what_is_wrong() -> None:
    assert split_option("C、 左侧") == ("C", "左侧")
    assert check_options(OPTIONS, "B") is None
    assert "in order" in check_options(["A. x", "C. y"], "A")
    assert "not one of the option letters" in check_options(OPTIONS[:3], "D")
    assert "not 'LETTER. text'" in check_options(["A. x", "B."], "A")
    assert "at least two" in check_options(["A. x"], "A")


def test_corpus_reports_bad_options_with_file_and_line(synth_dir: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (synth_dir / "train" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    doc = rows[0]["document"]
    split = tmp_path / "train"
    (split / "documents").mkdir(parents=True)
    (split / "documents" / doc).write_bytes((synth_dir / "train" / "documents" / doc).read_bytes())
    lines = [{"question": "部件1在哪里？", "document": doc, "options": OPTIONS, "answer": " b. "},
             {"question": "部件2在哪里？", "document": doc, "options": OPTIONS, "answer": "E"},
             {"question": "部件3在哪里？", "document": doc, "options": ["A. x", "A. y"], "answer": "A"},
             {"question": "部件4在哪里？", "document": doc, "answer": "在左侧"}]
    (split / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")
    data = read_split(tmp_path, "train")
    assert [(q.line, q.round, q.answer) for q in data.questions] == [(1, "a", "B"), (4, "b", "在左侧")]
    assert [(p.line, p.file.endswith("train.jsonl")) for p in data.problems] == [(2, True), (3, True)]
    assert "not one of the option letters" in data.problems[0].reason and "in order" in data.problems[1].reason
    assert data.summary()["rounds"] == {"a": 1, "b": 1}


def test_round_a_items_score_by_accuracy_and_round_b_by_composite() -> None:
    items = [{"prediction": "B", "answer": "B", "round": "a"}, {"prediction": "", "answer": "C", "round": "a"},
             {"prediction": "电动机", "answer": "电动机", "round": "b"}, {"prediction": "电", "answer": "电动机", "round": "b"}]
    rows = score_items(items, ["char_f1"], {"char_f1": 1.0})
    assert [r["scores"][COMPOSITE] for r in rows] == [1.0, 0.0, 1.0, pytest.approx(0.5)]
    assert [r["scores"]["accuracy"] for r in rows[:2]] == [1.0, 0.0]
    assert "char_f1" not in rows[0]["scores"] and "accuracy" not in rows[2]["scores"]


def test_synthetic_round_a_balances_letters_and_draws_distractors_of_the_same_kind(tmp_path: Path) -> None:
    from patentqa.data.synth.patents import SynthSpec, generate

    generate(tmp_path, SynthSpec(n_docs=8, seed=3, rounds=["a", "b"]))
    rows = [json.loads(line) for line in (tmp_path / "train" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    test = [json.loads(line) for line in (tmp_path / "test" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    choice = [r for r in rows if "options" in r]
    assert choice and len(choice) < len(rows) and any("options" in r for r in test)  # both rounds, options in test too
    letters = Counter(r["answer"] for r in choice)
    assert set(letters) <= set("ABCD") and max(letters.values()) - min(letters.values()) <= 2, letters
    for row in choice:
        assert check_options(row["options"], row["answer"]) is None
        texts = [split_option(o)[1] for o in row["options"]]
        assert len(set(texts)) == 4, row["options"]  # four different answers
        if row["kind"] == "figure_position":  # the other three directions, or other parts of the figure
            directions = sum(d in t for t in texts for d in ("左侧", "右侧", "上方", "下方"))
            assert directions == 4 or (directions == 0 and all(re.search(r"\d", t) for t in texts)), texts
    truth = json.loads(next((tmp_path / "train" / "truth").glob("*.json")).read_text(encoding="utf-8"))
    assert all("answer_text" in q for q in truth["questions"])


def test_final_answer_reads_the_final_line_else_the_last_line() -> None:
    assert final_answer(cot_response("部件3的标号在(10,20)处。\n比较位置。", "在12的下方")) == ("在12的下方", True)
    assert final_answer("先看图2。\n最终答案: 电动机\n") == ("电动机", True)
    assert final_answer("先看图2。\n电动机") == ("电动机", False)
    assert final_answer("") == ("", False)


def test_a_chain_with_a_wrong_final_answer_is_rejected() -> None:
    right = accept(f"图2中部件3在12下面。\n{FINAL}在12的下方", "在12的下方", 0.5)
    wrong = accept(f"图2中部件3在12上面。\n{FINAL}在7的左侧", "在12的下方", 0.5)
    no_line = accept("图2中部件3在12下面，在12的下方", "在12的下方", 0.5)
    assert right["accepted"] and right["chain"] == "图2中部件3在12下面。" and right["score"] == 1.0
    assert not wrong["accepted"] and wrong["score"] < 0.5
    assert not no_line["accepted"] and not no_line["has_final_line"]


def test_a_build_with_both_rounds_and_chains_puts_chains_in_train_rows_only(tmp_path: Path, tiny_vl, tiny_embedder) -> None:
    from patentqa.data.build import build_dataset
    from test_data_build import read_jsonl, smoke_cfg

    build = build_dataset(smoke_cfg(tmp_path, "data.rounds=[a,b]", "prompt.target=cot", "prompt=seed_a", n_docs=6))
    manifest = json.loads((build.out_dir / "manifest.json").read_text(encoding="utf-8"))
    train, dev = read_jsonl(build.out_dir / "train.jsonl"), read_jsonl(build.out_dir / "dev.jsonl")
    assert manifest["chains"]["train_rows_with_chain"] > 0 and manifest["chains"]["dev_rows_with_chain"] == 0
    responses = [r["messages"][-1]["content"] for r in train if r["chain"]]
    assert all(final_answer(t)[1] and "\n" in t for t in responses)
    assert not any(r["chain"] or FINAL in r["messages"][-1]["content"] for r in dev)
    for name in ("dev", "test"):  # evaluation records keep the plain gold, round A a letter with its options shown
        records = read_jsonl(build.out_dir / f"{name}_eval.jsonl")
        assert not any(FINAL in str(r["answer"]) for r in records)
        choice = [r for r in records if r["round"] == "a"]
        assert choice and all(r["answer"] in "ABCD" and r["options"][1] in json.dumps(r["prompt"], ensure_ascii=False)
                              for r in choice)
    assert manifest["inputs"]["labelled"]["rounds"]["a"] > 0 and manifest["inputs"]["labelled"]["rounds"]["b"] > 0
