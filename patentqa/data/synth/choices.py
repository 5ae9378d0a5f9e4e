"""Round-A (4-way multiple choice) versions of synthetic questions, from the generator's truth.

A question keeps its text; its gold answer becomes one of four options and the other three are
distractors of the same kind: a position answer with the other three directions, a part with
other parts of the same patent (its figure's parts for "which part" questions), a function, a
joint or a fact with another one of the patent or of the generator's word lists. The gold
letter cycles A, B, C, D over the set (``slot``), so letters are balanced and no letter prior
can pass for reading the figure.
"""
from __future__ import annotations

import random
import re
from typing import Any

from patentqa.data.synth import vocab as V
from patentqa.data.choices import LETTERS

DIRECTIONS = ("左侧", "右侧", "上方", "下方")


def _swap_part(answer: str, b: int, x: int, names: dict[int, str]) -> str:
    """``answer`` about part ``b`` rewritten about part ``x`` (number and name)."""
    out = re.sub(rf"(?<!\d){b}(?!\d)", str(x), answer)
    return out.replace(names[b], names[x]) if names.get(b) and names[b] in out else out


def distractors(rng: random.Random, candidate: dict[str, Any], pat: dict[str, Any], figure_parts: list[int],
                n: int = 3) -> list[str]:
    """``n`` wrong answers of the same kind as the candidate's gold answer (see module doc)."""
    answer, template, parts = candidate["answer"], candidate["template"], pat["parts"]
    names = {p.number: p.name for p in parts}
    if template == "relative_position":
        rel = next(d for d in DIRECTIONS if d in answer)
        return [answer.replace(rel, d) for d in DIRECTIONS if d != rel][:n]
    if template == "neighbour":
        b = candidate["parts"][1]
        pool = [x for x in figure_parts if x not in candidate["parts"]] or [p.number for p in parts if p.number != b]
        return [_swap_part(answer, b, x, names) for x in rng.sample(pool, min(n, len(pool)))]
    if template in ("part_name", "doc_part_use"):
        pool = [p.name for p in parts if p.name != answer]
    elif template in ("part_function", "doc_part_function"):
        prefix = "用于" if answer.startswith("用于") else ""
        pool = [prefix + p.function for p in parts if prefix + p.function != answer]
    elif template in ("part_use", "part_carrier"):
        number = int(re.findall(r"\d+", answer)[0]) if re.findall(r"\d+", answer) else None
        source = number if number in names else next(n for n, name in names.items() if name == answer)
        pool = [_swap_part(answer, source, p.number, names) if number in names else p.name
                for p in parts if p.number != source]
    elif template in ("part_joint", "doc_part_joint"):
        pool = sorted({a for _, a in V.JOINTS} - {answer})
    elif template == "doc_issue":
        pool = [answer.replace(pat["issue"], issue) for issue in V.ISSUES if issue != pat["issue"]]
    elif template == "doc_benefit":
        pool = [b for b in V.BENEFITS if b != answer]
    elif template in ("doc_purpose", "doc_field"):
        pool = [answer.replace(pat["obj"], obj) for obj in V.OBJECTS if obj != pat["obj"]]
    elif template == "doc_components":
        names_pool = [p.name for p in parts]
        pool = ["、".join(rng.sample(names_pool, 2)) + "和" + rng.choice(names_pool) for _ in range(8)]
    else:
        raise ValueError(f"no distractors for question template {template!r}")
    pool = list(dict.fromkeys(x for x in pool if x and x != answer))
    return rng.sample(pool, min(n, len(pool)))


def to_choice(rng: random.Random, candidate: dict[str, Any], pat: dict[str, Any], figure_parts: list[int],
              slot: int) -> tuple[list[str], str] | None:
    """(options "A. …", gold letter) for a candidate, the gold at letter ``slot % 4``; None without 3 distractors."""
    wrong = distractors(rng, candidate, pat, figure_parts)
    if len(wrong) < 3:
        return None
    texts = wrong[:3]
    gold = slot % 4
    texts.insert(gold, candidate["answer"])
    return [f"{LETTERS[i]}. {text}" for i, text in enumerate(texts)], LETTERS[gold]
