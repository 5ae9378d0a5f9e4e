"""Round A (multiple choice): option lists and the letter a reply names.

Round A rows carry ``"options": ["A. …", "B. …", "C. …", "D. …"]`` and ``"answer": "B"``.
``check_options`` says what is wrong with a row's options (letters A, B, C… in order, each
once, a text after each letter; the answer one of them). ``parse_choice`` reads the letter a
reply names: "B", "B.", "选B", "答案：B", "B. 在12的下方", or the text of one option without its
letter. A reply that names no letter, or several, is unparsed: it scores 0 and is counted.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Optional, Sequence

LETTERS = "ABCDEFGH"
_OPTION = re.compile(r"^\s*([A-Ha-h])\s*[.．、:：)）]\s*(.*\S)?\s*$", re.S)


def normalize_letter(text: str) -> str:
    """An answer letter as stored and compared: NFKC, trimmed, upper case, no trailing dot (" b. " -> "B")."""
    return unicodedata.normalize("NFKC", text).strip().upper().rstrip(".")


def split_option(option: str) -> tuple[str, str] | None:
    """("B", "在12的下方") of "B. 在12的下方"; None when it does not start with a letter and a separator."""
    match = _OPTION.match(unicodedata.normalize("NFKC", option))
    return (match.group(1).upper(), (match.group(2) or "").strip()) if match else None


def check_options(options: Sequence[str], answer: Optional[str]) -> str | None:
    """The reason a row's options (and answer) are unusable, or None."""
    if len(options) < 2:
        return f"options must list at least two choices, got {len(options)}"
    parsed = [split_option(o) for o in options]
    bad = [o for o, p in zip(options, parsed) if p is None or not p[1]]
    if bad:
        return f"option {bad[0]!r} is not 'LETTER. text'"
    letters = [p[0] for p in parsed if p]
    if letters != list(LETTERS[:len(letters)]):
        return f"option letters must be {', '.join(LETTERS[:len(letters)])} in order, got {', '.join(letters)}"
    if answer is not None and normalize_letter(answer) not in letters:
        return f"answer {answer!r} is not one of the option letters {', '.join(letters)}"
    return None


@dataclass(frozen=True)
class Choice:
    """What a reply names: a letter, or why none (``unparsed``)."""

    letter: Optional[str]
    how: str


_STANDALONE = r"(?<![A-Za-z]){}(?![A-Za-z])"


def parse_choice(reply: str, options: Sequence[str]) -> Choice:
    """The letter ``reply`` names among ``options`` (see module doc)."""
    text = unicodedata.normalize("NFKC", reply).strip()
    letters = [p[0] for p in (split_option(o) for o in options) if p]
    if not text:
        return Choice(None, "empty reply")
    # an explicit marker wins: 答案：B, 选B, 选择B, 正确答案是B, answer: B
    marked = re.findall(r"(?:答案|选项|选择|选|answer)\s*(?:是|为|:|：)?\s*([A-Ha-h])(?![A-Za-z])", text, re.I)
    marked = sorted({m.upper() for m in marked} & set(letters))
    if len(marked) == 1:
        return Choice(marked[0], "marked")
    if len(marked) > 1:
        return Choice(None, f"names several letters ({', '.join(marked)})")
    # a reply that starts with a letter: "B", "B.", "B. 在12的下方"
    lead = re.match(r"^([A-Ha-h])(?:\s*[.．、:：)）]|\s|$)", text)
    if lead and lead.group(1).upper() in letters:
        others = {l for l in letters if l != lead.group(1).upper() and re.search(_STANDALONE.format(l), text[1:])}
        if not others:
            return Choice(lead.group(1).upper(), "leading letter")
        return Choice(None, f"names several letters ({', '.join(sorted(others | {lead.group(1).upper()}))})")
    standalone = sorted({l for l in letters if re.search(_STANDALONE.format(l), text)})
    if len(standalone) == 1 and len(text) <= 3:
        return Choice(standalone[0], "letter")
    # the text of one option, without its letter
    squeeze = lambda s: re.sub(r"[\s。.，,！!？?]", "", unicodedata.normalize("NFKC", s))  # noqa: E731
    matches = [p[0] for p in (split_option(o) for o in options) if p and squeeze(p[1]) and squeeze(p[1]) in squeeze(text)]
    if len(matches) == 1:
        return Choice(matches[0], "option text")
    if len(standalone) > 1 or len(matches) > 1:
        return Choice(None, f"names several letters ({', '.join(sorted(set(standalone) | set(matches)))})")
    return Choice(None, "names no option letter")
