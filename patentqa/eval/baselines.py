"""Model-free baselines, answered and scored like every model: ``label geometry (no model)``.

A position question ("部件4相对于部件5的位置关系是？") names two part numbers on a drawing page.
The baseline finds where OCR read each number on that page (inside the question's figure when
the layout knows it) and answers with the side of the dominant axis between the two label
centres, in the answer form that goes with the question's phrasing (the round-B phrasings of
``patentqa.data.synth.vocab``; an unknown phrasing gets "部件A位于部件B的<side>"). "Which part
lies on side X of part A" questions get the nearest label on that side. Other questions, or a
number OCR did not find, get an empty answer, which scores 0 and is counted.

Labels sit at the far end of leader lines, beside their parts, not on them: where a label is
placed is evidence about, not the truth of, where its part is. So this is a floor that tells
how much of the position task a model adds, not ground truth.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

from patentqa.data.synth import vocab as V
from patentqa.data.corpus import Document, Question
from patentqa.data.questions import normalize, parse_question

LABEL = "label geometry (no model)"
SIDES = ("左侧", "右侧", "上方", "下方")


def side(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where point ``a`` lies from point ``b`` along the dominant axis (y grows downwards)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= abs(dy):
        return "右侧" if dx > 0 else "左侧"
    return "下方" if dy > 0 else "上方"


def _pattern(template: str) -> re.Pattern[str]:
    """A question template as a regex: {a}/{b} capture numbers, {na}/{nb} names, {rel} a side."""
    escaped = re.escape(normalize(template))  # NFKC, as the question text: ？ becomes ?
    for key, group in (("a", r"(?P<a>\d+)"), ("b", r"(?P<b>\d+)"), ("na", r"(?P<na>[^()（）]+?)"),
                       ("nb", r"(?P<nb>[^()（）]+?)"), ("rel", r"(?P<rel>" + "|".join(SIDES) + ")")):
        escaped = escaped.replace(re.escape("{" + key + "}"), group)
    return re.compile(escaped + "$")


PAIR_FORMS = [(_pattern(q), a) for q, a in V.POSITION_PHRASINGS]
NEIGHBOUR_FORMS = [(_pattern(q), a) for q, a in V.NEIGHBOUR_PHRASINGS + V.NEAREST_NEIGHBOUR_PHRASINGS]


def _position(layout: Any, document: Document, page: int, number: int, box: Optional[list[float]]) -> Optional[tuple]:
    found = layout.label_positions(document.name, page, number)
    inside = [p for p in found if box and box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]]
    chosen = inside or found
    return chosen[0] if chosen else None


def label_geometry_answer(question: Question, document: Document, layout: Any) -> tuple[str, str]:
    """(answer, how it was found or why there is none) for one question."""
    parsed = parse_question(question.question)
    if parsed.kind != "figure_position" or parsed.page is None:
        return "", "not a position question"
    text = normalize(question.question)
    figure = layout.figure_for(question, document)
    box = figure["box"] if figure else None
    for pattern, answer in NEIGHBOUR_FORMS:
        match = pattern.search(text)
        if match:
            a, rel = int(match["a"]), match["rel"]
            origin = _position(layout, document, parsed.page, a, box)
            if origin is None:
                return "", f"part {a} not found on page {parsed.page}"
            layer = layout.layer(document.name, parsed.page) or {"lines": []}
            others = []
            for line in layer["lines"]:
                value = normalize(line["text"])
                if value.isdigit() and int(value) != a:
                    centre = ((line["box"][0] + line["box"][2]) / 2, (line["box"][1] + line["box"][3]) / 2)
                    if (not box or box[0] <= centre[0] <= box[2] and box[1] <= centre[1] <= box[3]) \
                            and side(origin, centre) == rel:
                        others.append((math.dist(origin, centre), int(value)))
            if not others:
                return "", f"no label on the {rel} side of part {a}"
            b = min(others)[1]
            return answer.format(b=b, nb=str(b)), f"nearest label on that side: {b}"
    parts = list(parsed.parts)
    names: dict[str, str] = {}
    template = "部件{a}位于部件{b}的{rel}"
    for pattern, answer in PAIR_FORMS:
        match = pattern.search(text)
        if match:
            parts, template = [int(match["a"]), int(match["b"])], answer
            names = {k: match[k] for k in ("na", "nb") if k in pattern.groupindex}
            break
    if len(parts) < 2:
        return "", "fewer than two part numbers in the question"
    a, b = parts[:2]
    pa, pb = (_position(layout, document, parsed.page, n, box) for n in (a, b))
    if pa is None or pb is None:
        missing = [n for n, p in ((a, pa), (b, pb)) if p is None]
        return "", f"part(s) {missing} not found on page {parsed.page}"
    rel = side(pa, pb)
    return template.format(a=a, b=b, rel=rel, **names), f"labels {a} at {pa}, {b} at {pb}"


def label_geometry_records(questions: list[Question], documents: dict[str, Document], layout: Any) -> list[dict]:
    """Prediction records (the pipeline's fields) of the baseline for ``questions``."""
    records = []
    for question in questions:
        answer, how = label_geometry_answer(question, documents[question.document], layout)
        parsed = parse_question(question.question)
        records.append({"id": question.id, "document": question.document, "question": question.question,
                        "kind": parsed.kind, "form": "label_geometry", "pages": [parsed.page] if parsed.page else [],
                        "classifier": None, "raw_answer": answer, "styled_answer": None, "prediction": answer,
                        "answer": question.answer, "baseline": how})
    return records


BASELINES = {"label_geometry": (LABEL, label_geometry_records)}
