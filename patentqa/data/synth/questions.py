"""Questions about a synthetic patent, drawn from its ground truth (``patentqa.data.synth``).

Three kinds, phrased like the real CCKS 2025 round-B questions:
``figure_position`` (which side of part b part a lies on, from the drawn geometry),
``figure_other`` (name, function, carrier or joint of a drawn part, from the description)
and ``document`` (purpose, problem, components ... of the whole patent).
Evidence pages are the 1-based pages that show or state the answer.
"""
from __future__ import annotations

import math
import random
import re
from itertools import permutations
from typing import Any

from patentqa.data.synth import vocab as V
from patentqa.data.synth.vocab import Part

KINDS = ("figure_position", "figure_other", "document")
GAP = 8.0  # points of clear space needed between two parts for a position answer
TEXT_ROLES = ("abstract", "claims", "description")


def relation(a: list[float], b: list[float]) -> str | None:
    """Where box ``a`` lies relative to box ``b`` when one axis clearly dominates."""
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    if abs(dx) > 2 * abs(dy) and (a[0] > b[2] + GAP or a[2] < b[0] - GAP):
        return "右侧" if dx > 0 else "左侧"
    if abs(dy) > 2 * abs(dx) and (a[1] > b[3] + GAP or a[3] < b[1] - GAP):
        return "下方" if dy > 0 else "上方"
    return None


def plain(page: dict) -> str:
    """A page's text on one line, with 机架(1) written as 机架1 (how the description writes it)."""
    return re.sub(r"\((\d+)\)", r"\1", "".join(page["lines"]))


def pages_with(pattern: str, pages: list[dict], roles: tuple[str, ...]) -> list[int]:
    return [p["page"] for p in pages if p["role"] in roles and re.search(pattern, plain(p))]


def figure_opening(rng: random.Random, fig: dict) -> str:
    """"在文件中第7页的图2中，" and the other real ways of naming a figure page."""
    return rng.choice(V.FIGURE_OPENINGS).format(p=fig["page"], f=fig["figure"], view=fig["view"])


def part_reference(rng: random.Random, number: int, name: str) -> str:
    """"部件12" / "编号为12的部件" / "连接法兰(12)" / "连接法兰"."""
    return rng.choice(V.PART_REFERENCES).format(n=number, name=name)


def candidate(kind: str, question: str, answer: str, evidence: list[int], template: str,
              parts: list[int], key: tuple) -> dict:
    return {"kind": kind, "question": question, "answer": answer, "evidence_pages": sorted(set(evidence)),
            "template": template, "parts": parts, "key": key}


def centre_distance(a: list[float], b: list[float]) -> float:
    return math.dist(((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2))


def loose_side(a: list[float], b: list[float]) -> str:
    """The dominant-axis side of ``a`` from ``b``, however close."""
    dx, dy = (a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2
    if abs(dx) >= abs(dy):
        return "右侧" if dx > 0 else "左侧"
    return "下方" if dy > 0 else "上方"


def position_candidates(rng: random.Random, fig: dict, names: dict[int, str]) -> list[dict]:
    """Pairs with a clear side, and 'which part is part a on side X of'."""
    boxes = {d["number"]: d["bbox"] for d in fig["parts"]}
    out = []
    for a, b in permutations(sorted(boxes), 2):
        if rel := relation(boxes[a], boxes[b]):
            fill = {"a": a, "b": b, "na": names[a], "nb": names[b], "rel": rel}
            q, answer = (text.format(**fill) for text in rng.choice(V.POSITION_PHRASINGS))
            out.append(candidate("figure_position", figure_opening(rng, fig) + q, answer, [fig["page"]],
                                 "relative_position", [a, b], ("pair", fig["page"], min(a, b), max(a, b))))
    for a in sorted(boxes):
        for rel in ("左侧", "右侧", "上方", "下方"):
            side = sorted((centre_distance(boxes[a], boxes[x]), x) for x in boxes
                          if x != a and loose_side(boxes[a], boxes[x]) == rel)
            if not side or relation(boxes[a], boxes[side[0][1]]) != rel:
                continue
            if len(side) == 1:
                phrasings = V.NEIGHBOUR_PHRASINGS
            elif side[1][0] >= 1.5 * side[0][0]:
                phrasings = V.NEAREST_NEIGHBOUR_PHRASINGS
            else:
                continue
            b = side[0][1]
            question, answer = rng.choice(phrasings)
            q = figure_opening(rng, fig) + question.format(a=a, rel=rel)
            out.append(candidate("figure_position", q, answer.format(b=b, nb=names[b]), [fig["page"]],
                                 "neighbour", [a, b], ("pair", fig["page"], min(a, b), max(a, b))))
    return out


def fact_patterns(p: Part, pat: dict[str, Any]) -> dict[str, str]:
    """Regexes that find where the description states each fact about part ``p``."""
    out = {"name": rf"(?<!\d){p.number}{re.escape(pat['list_style'])}{p.name}",
           "function": re.escape(f"用于{p.function}")}
    if p.joint:
        out["joint"] = re.escape(p.joint)
    return out


def figure_other_candidates(rng: random.Random, fig: dict, pat: dict, pages: list[dict]) -> list[dict]:
    """Name, function, carrier, joint and 'which part does X' questions about a drawn part."""
    parts = {p.number: p for p in pat["parts"]}
    drawn, out = {d["number"] for d in fig["parts"]}, []
    for d in fig["parts"]:
        p = parts[d["number"]]
        facts = fact_patterns(p, pat)
        found = {k: pages_with(v, pages, ("description",))[:1] for k, v in facts.items()}
        fill = {"n": p.number, "name": p.name, "function": p.function}
        items = [("part_name", V.NAME_QUESTIONS, p.name, "name"),
                 ("part_function", V.FUNCTION_QUESTIONS, rng.choice(["", "用于"]) + p.function, "function"),
                 ("part_use", V.USE_QUESTIONS, part_reference(rng, p.number, p.name), "function")]
        if p.carrier in drawn:
            c = parts[p.carrier]
            fill.update(pname=c.name, m=c.number)
            items += [("part_carrier", V.CARRIER_QUESTIONS, part_reference(rng, c.number, c.name), "joint"),
                      ("part_joint", V.JOINT_QUESTIONS, p.joint_answer, "joint")]
        for template, phrasings, answer, fact in items:
            q = figure_opening(rng, fig) + rng.choice(phrasings).format(**fill)
            if found[fact]:
                out.append(candidate("figure_other", q, answer, [fig["page"]] + found[fact], template,
                                     [p.number], (template, p.number)))
    return out


def document_candidates(rng: random.Random, pat: dict[str, Any], pages: list[dict]) -> list[dict]:
    """Whole-patent questions; evidence = every text page that states the answer."""
    short = pat["short"]
    facts = [("doc_purpose", f"该{short}的主要功能是什么？", pat["purpose"], pat["purpose"]),
             ("doc_issue", rng.choice(["本实用新型旨在解决什么技术问题？", f"该{short}主要解决的技术问题是什么？"]),
              rng.choice([f"{pat['issue']}的问题", f"解决现有{pat['device']}{pat['issue']}的问题"]), pat["issue"]),
             ("doc_components", f"该{short}包括哪些主要部件？", pat["components"], pat["components"]),
             ("doc_field", "该实用新型涉及的领域是？", pat["field"], pat["field"]),
             ("doc_benefit", "与现有技术相比，本实用新型的有益效果是什么？", pat["benefit"], pat["benefit"])]
    out = [candidate("document", rng.choice(V.DOCUMENT_OPENINGS) + q, a, pages_with(re.escape(k), pages, TEXT_ROLES),
                     t, [], (t,)) for t, q, a, k in facts]
    for p in rng.sample(pat["parts"][1:], 2):  # two parts: whole-patent facts stay about half the pool
        c = next(x for x in pat["parts"] if x.number == p.carrier)
        items = [("doc_part_function", f"{p.name}的主要作用是什么？", p.function, f"用于{p.function}"),
                 ("doc_part_use", f"哪个部件用于{p.function}？", p.name, f"用于{p.function}"),
                 ("doc_part_joint", f"{p.name}与{c.name}之间通过什么方式连接？", p.joint_answer, p.joint)]
        out += [candidate("document", rng.choice(V.DOCUMENT_OPENINGS) + q, a,
                          pages_with(re.escape(k), pages, TEXT_ROLES), t, [p.number], (t, p.number))
                for t, q, a, k in items]
    return [c for c in out if c["evidence_pages"]]


def pick_questions(rng: random.Random, pools: dict[str, list[dict]], shares: tuple[float, ...],
                   n: int) -> list[dict]:
    """Draw ``n`` questions, each kind with its share (order of KINDS); no fact is asked twice."""
    for pool in pools.values():
        rng.shuffle(pool)
    chosen: list[dict] = []
    used: set[tuple] = set()
    while len(chosen) < n:
        first = rng.choices(KINDS, shares)[0]
        for kind in [first] + [k for k in KINDS if k != first]:
            pool = pools[kind]
            while pool and pool[-1]["key"] in used:
                pool.pop()
            if pool:
                chosen.append(pool.pop())
                used.add(chosen[-1]["key"])
                break
        else:
            break
    return chosen


