"""The one prompt builder: seed templates verbatim, our variant, and every renderer."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from patentqa.data.prompts import (IMAGE_TAG, PageImage, PromptConfig, build_prompt, classifier_prompt,
                                   prompt_form, style_prompt, to_chat_messages, to_swift_row)

SEED_B = PromptConfig(name="seed_b", max_pixels={"with_context": 1568000, "figure_only": 2352000})
LABELS = PromptConfig(name="page_labels", max_pixels={"with_context": 1568000, "figure_only": 2352000})


def _seed_form(row: dict) -> str:
    """The form a seed SFT row was written in, from its image count and question."""
    has_page = prompt_form(row["question"]) != "document"
    return "document" if not has_page else ("figure_only" if len(row["images"]) == 1 else "with_context")


def test_seed_b_reproduces_all_781_seed_queries(reference) -> None:
    questions = {json.loads(line)["question_idx"]: json.loads(line)["question"]
                 for line in open(reference / "seed_round_b_questions.jsonl", encoding="utf-8")}
    rows = [json.loads(line) for line in open(reference / "seed_round_b_sft.jsonl", encoding="utf-8")]
    forms: Counter[str] = Counter()
    for row in rows:
        row["question"] = questions[row["question_idx"]]
        form = _seed_form(row)
        pages = [PageImage(i + 1, path) for i, path in enumerate(row["images"])]
        asked, context = (None, pages) if form == "document" else (pages[0], pages[1:])
        prompt = build_prompt(SEED_B, row["question"], form, asked, context)
        assert prompt.text() == row["query"], f"question_idx {row['question_idx']}"
        assert [image.path for image in prompt.images] == row["images"]
        forms[form] += 1
    assert len(rows) == 781
    assert forms == {"with_context": 442, "document": 158, "figure_only": 181}


def test_seed_pixel_budgets() -> None:
    asked, other = PageImage(3, "p3.jpg"), [PageImage(1, "p1.jpg"), PageImage(5, "p5.jpg")]
    q = "在文件中第3页的图1中，编号为2的部件相对于编号为5的部件的位置关系是？"
    assert {i.max_pixels for i in build_prompt(SEED_B, q, "with_context", asked, other).images} == {1568000}
    assert {i.max_pixels for i in build_prompt(SEED_B, q, "figure_only", asked, []).images} == {2352000}


def test_page_labels_variant_names_every_page() -> None:
    q = "在文件中第3页的图1中，编号为2的部件是什么？"
    prompt = build_prompt(LABELS, q, "with_context", PageImage(3, "p3.jpg"), [PageImage(1, "a"), PageImage(5, "b")])
    text = prompt.text()
    assert "该问题针对于第3页专利内容" in text
    assert "第3页：<image>" in text and "第1页：<image>第5页：<image>" in text
    assert text.count(IMAGE_TAG) == 3


def test_routing_picks_the_form() -> None:
    assert prompt_form("根据专利文本，主要功能是什么？") == "document"
    assert prompt_form("在文件中第6页的示意图中，部件3位于部件2的什么位置？") == "figure_only"
    assert prompt_form("在文件中第6页的图中，编号为5的部件是什么？") == "with_context"
    assert prompt_form("在文件中第6页的图中，编号为5的部件是什么？", figure_only=True) == "figure_only"


def test_swift_row_and_chat_messages_carry_the_same_prompt() -> None:
    prompt = build_prompt(SEED_B, "根据专利文本，主要功能是什么？", "document", None,
                          [PageImage(1, "p1.jpg"), PageImage(2, "p2.jpg")])
    row = to_swift_row(prompt, "过滤")
    assert row["messages"][0]["content"].count(IMAGE_TAG) == len(row["images"]) == 2
    assert row["chat_template_kwargs"]["max_pixels"] == 1568000
    assert row["messages"][1] == {"role": "assistant", "content": "过滤"}
    content = to_chat_messages(prompt)[0]["content"]
    rebuilt = "".join(c["text"] if c["type"] == "text" else IMAGE_TAG for c in content)
    assert rebuilt == row["messages"][0]["content"]
    assert [c["image"] for c in content if c["type"] == "image"] == row["images"]


def test_classifier_and_style_prompts_follow_the_seed() -> None:
    text = classifier_prompt("在文件中第5页的图片中，部件4是什么？").text()
    assert text.endswith("部件4是什么？\n请直接回答分类结果，不要解释，你的答案为：")
    style = style_prompt("部件3在左边", ["17位于18的右侧", "滤网"]).text()
    assert "回答风格示例: 17位于18的右侧\n滤网\n\n\n\n你要判断的文本内容为：\n部件3在左边请直接回答" in style


def test_unknown_form_is_an_error() -> None:
    with pytest.raises(ValueError):
        build_prompt(SEED_B, "q", "bogus", None, [])
