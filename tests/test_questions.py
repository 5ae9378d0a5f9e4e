"""Question routing over hand-written cases and the 600 real round-B questions."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from patentqa.data.questions import QUESTION_KINDS, chinese_to_int, parse_question


@pytest.mark.parametrize("text,value", [("7", 7), ("十", 10), ("十二", 12), ("二十", 20), ("二十三", 23),
                                        ("一百零五", 105), ("两", 2)])
def test_chinese_numerals(text: str, value: int) -> None:
    assert chinese_to_int(text) == value


@pytest.mark.parametrize("question,page,figure,parts,kind", [
    ("在文件中第10页的示意图中，编号为17的部件相对于编号为18的部件的位置关系是？", 10, None, (17, 18), "figure_position"),
    ("在文件中第 10 页的示意图中，编号为17的部件相对于编号为18的部件的位置关系是？", 10, None, (17, 18), "figure_position"),
    ("在文件中第十二页的图2中，编号为5的部件是什么？", 12, 2, (5,), "figure_other"),
    ("在文件中第１２页的图片２中，部件（7）连接了哪些部件？", 12, 2, (7,), "figure_other"),
    ("在文件中第5页提供的图片1中，部件7位于哪个部件的下方？", 5, 1, (7,), "figure_position"),
    ("根据文件中第7页图3示，如果需要调节第一滑板(13)和第二滑板(14)的间距，需要操作哪个部件?", 7, 3, (13, 14), "figure_other"),
    ("根据文件中第6页的图片和文本信息，如果需要调整抱紧环21和22之间的距离，应该操作哪个部件？", 6, None, (21, 22), "figure_other"),
    ("根据专利文本，酯化反应的主要原料是什么？", None, None, (), "document"),
    ("根据专利文本，1,4-丁二醇的作用是什么？", None, None, (), "document"),
])
def test_parse_question(question: str, page, figure, parts, kind) -> None:
    parsed = parse_question(question)
    assert (parsed.page, parsed.figure, parsed.parts, parsed.kind) == (page, figure, parts, kind)


def test_routing_over_real_questions(reference) -> None:
    rows = [json.loads(line) for line in open(reference / "seed_round_b_questions.jsonl", encoding="utf-8")]
    parsed = [parse_question(row["question"]) for row in rows]
    kinds = Counter(p.kind for p in parsed)
    with_page = sum(p.page is not None for p in parsed)
    print(f"\n600 real questions: {with_page} with a page; kinds {dict(kinds)}")
    assert len(rows) == 600
    assert with_page == 442  # FACTS.md: 442 of 600 ask about a named page
    assert set(kinds) == set(QUESTION_KINDS)
    assert kinds["document"] == 158
    # every real question that names parts with 编号 gets at least one part number
    named = [p for p, row in zip(parsed, rows) if "编号为" in row["question"]]
    assert named and all(p.parts for p in named)
    # position answers (左侧/右侧/上方/下方) mostly come from figure_position questions
    directional = [p.kind for p, row in zip(parsed, rows)
                   if row["answer"].endswith(("左侧", "右侧", "上方", "下方")) and p.page]
    assert Counter(directional)["figure_position"] >= 0.9 * len(directional)
