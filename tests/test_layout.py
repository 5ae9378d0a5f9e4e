"""Document structure without the OCR model: reading order, figure regions, the prompt variants
that use OCR text, BM25/hybrid retrieval over page text, and the label-geometry baseline."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from patentqa.data.corpus import Document, Question
from patentqa.data.ocr.figures import caption_number, find_figures, iou
from patentqa.data.ocr.reader import reading_order
from patentqa.data.prompts import PageImage, PromptConfig, build_prompt
from patentqa.data.retrieval import RRF_K, Bm25Retriever, HybridRetriever
from patentqa.eval.baselines import label_geometry_answer, side

SEED_B = PromptConfig(name="seed_b", max_pixels={"with_context": 50176, "figure_only": 100352})


def line(text: str, x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    return {"text": text, "box": [x0, y0, x1, y1], "confidence": 1.0}


def test_reading_order_rows_then_columns() -> None:
    lines = [line("右", 300, 90, 400, 102), line("左", 70, 88, 200, 101), line("下", 70, 120, 200, 132)]
    assert [l["text"] for l in reading_order(lines)] == ["左", "右", "下"]


def test_caption_numbers() -> None:
    assert [caption_number(t) for t in ("图1", "图 12", "图３", "图1为本实用新型", "1")] == [1, 12, 3, None, None]


def page_with_two_figures() -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A 595x842 pt page at 72 DPI: two drawings stacked, each with its 图N caption below it."""
    image = np.full((842, 595), 255, dtype=np.uint8)
    image[120:300, 100:450] = 0   # figure 1 ink
    image[480:700, 150:400] = 0   # figure 2 ink
    image[200:210, 460:472] = 0   # part number 12, beside figure 1
    lines = [line("CN 200000000 U", 70, 40, 150, 52), line("说明书附图", 250, 40, 340, 52),
             line("图1", 280, 330, 310, 345), line("图2", 280, 730, 310, 745), line("12", 460, 200, 472, 210)]
    return image, lines


def test_figures_are_found_under_their_captions() -> None:
    image, lines = page_with_two_figures()
    figures = {f.number: f for f in find_figures(image, 1.0, 595, 842, lines)}
    assert set(figures) == {1, 2} and not any(f.fallback for f in figures.values())
    assert iou(figures[1].box, [100, 120, 472, 300]) > 0.95  # the label 12 beside it belongs to the figure
    assert iou(figures[2].box, [150, 480, 400, 700]) > 0.95


def test_text_pages_have_no_figures_and_captionless_drawings_fall_back() -> None:
    image, lines = page_with_two_figures()
    text = [line("本实用新型公开了一种折叠式电动自行车车架，包括主车架", 70, 100 + 20 * i, 520, 112 + 20 * i)
            for i in range(10)]
    assert find_figures(image, 1.0, 595, 842, text) == []
    (whole,) = find_figures(image, 1.0, 595, 842, [l for l in lines if "图" not in l["text"]])
    assert whole.fallback and whole.box == [0.0, 0.0, 595.0, 842.0]


def test_ocr_text_beside_and_instead() -> None:
    asked, other = PageImage(3, "p3.jpg", "部件4 部件2"), PageImage(5, "p5.jpg", "附图标记说明：4-电机")
    question = "在文件中第3页的示意图中，编号为4的部件是什么？"
    plain = build_prompt(SEED_B, question, "with_context", PageImage(3, "p3.jpg"), [PageImage(5, "p5.jpg")])
    beside = build_prompt(replace(SEED_B, ocr_text="beside"), question, "with_context", asked, [other])
    instead = build_prompt(replace(SEED_B, ocr_text="instead"), question, "with_context", asked, [other])
    assert len(beside.images) == 2 and [i.page for i in instead.images] == [3]
    block = "页面文字识别结果：\n第3页的文字（OCR）：\n部件4 部件2\n第5页的文字（OCR）：\n附图标记说明：4-电机\n\n"
    assert block in beside.text() and block in instead.text() and "页面文字" not in plain.text()
    assert beside.text().replace(block, "") == plain.text()  # only the block is added
    cut = build_prompt(replace(SEED_B, ocr_text="beside", ocr_max_chars=5), question, "with_context", asked, [other])
    assert "（OCR）：\n部件4 部\n\n" in cut.text() and "附图标记" not in cut.text()  # 5 characters in all
    document = build_prompt(replace(SEED_B, ocr_text="instead"), "该专利的用途是什么？", "document", None, [other])
    assert not document.images and "附图标记说明" in document.text()
    with pytest.raises(ValueError, match="ocr_text"):
        PromptConfig.from_cfg({"name": "x", "image_tokens": {"with_context": 1}, "min_image_tokens": 1,
                               "ocr_text": "over"}, factor=28)


class FakeLayout:
    """Page texts and OCR lines, as ``patentqa.data.ocr.layout.Layout`` gives them."""

    def __init__(self, texts: dict[tuple[str, int], str], lines: dict[tuple[str, int], list] | None = None,
                 figure: dict | None = None) -> None:
        self.texts, self.lines, self.figure = texts, lines or {}, figure

    def text(self, document: str, page: int) -> str | None:
        return self.texts.get((document, page))

    def layer(self, document: str, page: int) -> dict | None:
        return {"lines": self.lines.get((document, page), [])}

    def label_positions(self, document: str, page: int, number: int) -> list[tuple[float, float]]:
        return [((l["box"][0] + l["box"][2]) / 2, (l["box"][1] + l["box"][3]) / 2)
                for l in self.lines.get((document, page), []) if l["text"] == str(number)]

    def figure_for(self, question: Question, document: Document) -> dict | None:
        return self.figure


DOC = Document("d.pdf", None, "0" * 64, 4)  # type: ignore[arg-type]
TEXTS = {("d.pdf", 1): "一种折叠式车架", ("d.pdf", 2): "权利要求 电机 转轴 固定连接",
         ("d.pdf", 3): "散热片 风扇 壳体", ("d.pdf", 4): "附图标记说明 电机 齿轮"}
PAGES = {("d.pdf", p): f"p{p}.jpg" for p in range(1, 5)}


def test_bm25_ranks_pages_by_their_ocr_words() -> None:
    retriever = Bm25Retriever(1, PAGES, FakeLayout(TEXTS))
    question = Question("q", "该专利中电机与转轴如何连接？", "d.pdf")
    retriever.prepare([question], {"d.pdf": DOC})
    numbers, scores = retriever.scores(question, DOC)
    assert int(numbers[np.argmax(scores)]) == 2 and retriever.context_pages(question, DOC) == [2]
    page_question = Question("q2", "在文件中第2页的示意图中，电机的作用是什么？", "d.pdf")
    assert retriever.context_pages(page_question, DOC) == [4]  # the asked page is never context
    with pytest.raises(ValueError, match="OCR layer"):
        Bm25Retriever(1, PAGES, None)


def test_hybrid_fuses_ranks() -> None:
    class Gme:
        pages = PAGES
        similarity = None

        def prepare(self, *_: Any) -> None: ...

        def scores(self, question: Question, document: Document) -> tuple[np.ndarray, np.ndarray]:
            return np.array([1, 2, 3, 4]), np.array([0.1, 0.2, 0.9, 0.8])  # GME prefers pages 3 and 4

    hybrid = HybridRetriever(1, Bm25Retriever(1, PAGES, FakeLayout(TEXTS)), Gme())  # type: ignore[arg-type]
    question = Question("q", "电机 齿轮", "d.pdf")
    # bm25: page 4 (电机, 齿轮) first, page 2 second; gme: 3, 4, 2, 1 -> page 4 has 1/(60+1) + 1/(60+2)
    assert hybrid.context_pages(question, DOC) == [4] and RRF_K == 60


def test_side_of_label_centres() -> None:
    assert [side((0, 0), (10, 1)), side((10, 0), (0, 1)), side((0, 0), (1, 10)), side((0, 10), (1, 0))] == \
        ["左侧", "右侧", "上方", "下方"]


def test_label_geometry_answers_in_the_questions_phrasing() -> None:
    lines = {("d.pdf", 3): [line("4", 100, 100, 106, 108), line("5", 200, 104, 206, 112), line("7", 98, 300, 104, 308)]}
    layout = FakeLayout({}, lines)

    def ask(text: str) -> tuple[str, str]:
        return label_geometry_answer(Question("q", text, "d.pdf"), DOC, layout)

    assert ask("在文件中第3页的示意图中，部件4相对于部件5的位置关系是？")[0] == "部件4位于部件5的左侧"
    assert ask("在文件中第3页的图中，编号为4的部件相对于编号为5的部件的位置关系是？")[0] == "4位于5的左侧"
    assert ask("在文件中第3页的图中，部件7位于部件4的什么位置？")[0] == "位于下方"
    assert ask("在文件中第3页的图中，部件4位于哪个部件的上方？")[0] == "部件7"
    assert ask("在文件中第3页的图中，部件9相对于部件5的位置关系是？") == ("", "part(s) [9] not found on page 3")
    assert ask("在文件中第3页的示意图中，编号为4的部件是什么？") == ("", "not a position question")
