"""Question routing: pure functions that read a question's text.

``parse_question(text)`` finds the asked page (第N页, with spaces, full-width digits or
Chinese numerals), the figure reference (图N), the part numbers mentioned, and the
question kind that decides the prompt and the retrieval:

- ``figure_position``: relative position of parts in a figure on a named page;
- ``figure_other``: anything else about a figure on a named page (name, connection, function);
- ``document``: about the whole patent (no page named).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

QUESTION_KINDS: tuple[str, ...] = ("figure_position", "figure_other", "document")

_CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4,
              "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000}
_NUM = r"(\d+|[零〇一二两三四五六七八九十百千]+)"

_PAGE_RE = re.compile(r"第\s*" + _NUM + r"\s*页")
_FIGURE_RE = re.compile(r"图(?:片|示)?\s*" + _NUM + r"(?![\d页])")
# part numbers: 编号为17 / 标号12 / 部件(7) / 部件11 / (编号6) / （25）
_PART_RES = (
    re.compile(r"(?:编号|标号|序号)\s*(?:为|是)?\s*[（(]?\s*(\d+)"),
    re.compile(r"(?:部件|零件|构件)\s*[（(]?\s*(\d+)"),
    re.compile(r"[（(]\s*(\d+)\s*[)）]"),
)
# a number written straight after a part name: 导轨滑块6, 抱紧环21和22
_NAMED_PART_RE = re.compile(r"(?<=[\u4e00-\u9fff])(\d{1,3})(?![\d.,，%页])")
_POSITION_WORDS = ("位置", "方位", "哪一侧", "哪侧", "哪个方向", "什么方向", "哪一边", "哪边")
_DIRECTIONS = ("左侧", "右侧", "上方", "下方", "左边", "右边", "上面", "下面", "前面", "后面",
               "前方", "后方", "正上方", "正下方", "左方", "右方", "上部", "下部", "内侧", "外侧")


@dataclass(frozen=True)
class ParsedQuestion:
    """What routing needs to know about one question."""

    kind: str
    page: int | None = None
    figure: int | None = None
    parts: tuple[int, ...] = field(default_factory=tuple)


def chinese_to_int(text: str) -> int:
    """Convert an Arabic or Chinese numeral ("12", "十二", "二十三", "一百零五") to int."""
    if text.isdigit():
        return int(text)
    total, digit = 0, 0
    for char in text:
        if char in _CN_DIGITS:
            digit = _CN_DIGITS[char]
        elif char in _CN_UNITS:
            total += (digit or 1) * _CN_UNITS[char]
            digit = 0
        else:
            raise ValueError(f"not a numeral: {text!r}")
    return total + digit


def normalize(text: str) -> str:
    """NFKC (full-width digits and brackets become ASCII) and trimmed."""
    return unicodedata.normalize("NFKC", text).strip()


def asked_page(text: str) -> int | None:
    """The 1-based page a question names (第N页), or None for whole-patent questions."""
    match = _PAGE_RE.search(normalize(text))
    return chinese_to_int(match.group(1)) if match else None


def figure_ref(text: str) -> int | None:
    """The figure number a question names (图2, 图片1, 图3示), or None."""
    match = _FIGURE_RE.search(normalize(text))
    return chinese_to_int(match.group(1)) if match else None


def part_numbers(text: str) -> tuple[int, ...]:
    """Part numbers mentioned, in order of first mention, page and figure numbers excluded."""
    text = normalize(text)
    masked = _FIGURE_RE.sub(lambda m: "#" * len(m.group(0)), _PAGE_RE.sub(lambda m: "#" * len(m.group(0)), text))
    found: list[tuple[int, int]] = []
    for pattern in (*_PART_RES, _NAMED_PART_RE):
        found += [(m.start(1), int(m.group(1))) for m in pattern.finditer(masked)]
    ordered: list[int] = []
    for _, number in sorted(found):
        if number not in ordered:
            ordered.append(number)
    return tuple(ordered)


def is_position_question(text: str) -> bool:
    """True when a question asks where parts are relative to each other."""
    text = normalize(text)
    if any(word in text for word in _POSITION_WORDS):
        return True
    return "位于" in text and any(word in text for word in _DIRECTIONS)


def parse_question(text: str) -> ParsedQuestion:
    """Route one question: asked page, figure, part numbers and kind."""
    page = asked_page(text)
    if page is None:
        kind = "document"
    elif is_position_question(text):
        kind = "figure_position"
    else:
        kind = "figure_other"
    return ParsedQuestion(kind=kind, page=page, figure=figure_ref(text), parts=part_numbers(text))
