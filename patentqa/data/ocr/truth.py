"""Scoring the OCR layer and the figure regions against a synthetic set's ground truth.

``{split}/truth/<stem>.json`` (``patentqa.data.synth``) holds each page's role and text, and
each figure's parts: shape box, label position (the centre of the part number) and leader.

- CER by page role: Levenshtein distance / truth characters, both sides NFKC with whitespace
  removed. Text pages (abstract, claims, description) compare the page text; claims and
  description pages leave the running header out (the truth has none). Drawing pages compare
  their captions and part numbers in reading order.
- label recall (drawing pages): a part number is found when an OCR line reads that number as a
  token and its box, widened by ``LABEL_TOL_PT``, contains the label's true centre.
- figures: a true figure is found when a region with its caption number overlaps its true box
  with IoU >= ``FOUND_IOU``; the true box is the union of its parts' shapes and labels (what is
  drawn, caption excluded). ``figure_iou`` is the mean IoU over true figures (0 where missing).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from patentqa.data.corpus import Document
from patentqa.data.ocr.figures import HEADER_SHARE, iou
from patentqa.data.ocr.reader import OcrResult, layer_text, normalize_text, reading_order

TEXT_ROLES = ("abstract", "claims", "description")
ROLE_NAMES = {"figure": "drawings"}
LABEL_TOL_PT = 6.0   # a label box may sit this far off the number's true centre (label text is 10.5 pt)
FOUND_IOU = 0.5
LABEL_HALF = (3.5, 4.5)  # half width per digit and half height of a 10.5-pt part number, in points


def edit_distance(a: str, b: str) -> int:
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(a, b))


def label_box(part: dict[str, Any]) -> list[float]:
    x, y = part["label"]
    half = LABEL_HALF[0] * len(str(part["number"]))
    return [x - half, y - LABEL_HALF[1], x + half, y + LABEL_HALF[1]]


def true_figure_box(figure: dict[str, Any]) -> list[float]:
    boxes = [p["bbox"] for p in figure["parts"]] + [label_box(p) for p in figure["parts"]]
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def drawing_truth_text(figures: list[dict[str, Any]]) -> str:
    """Captions and part numbers of a drawing page in the reading order OCR lines get."""
    items = [{"text": str(p["number"]), "box": label_box(p)} for f in figures for p in f["parts"]]
    items += [{"text": f"图{f['figure']}", "box": [(f["region"][0] + f["region"][2]) / 2 - 12, f["region"][3] + 18,
                                                   (f["region"][0] + f["region"][2]) / 2 + 12, f["region"][3] + 30]}
              for f in figures]
    return "\n".join(item["text"] for item in reading_order(items))


def truth_text(page: dict[str, Any]) -> str:
    """A text page's truth in the reading order OCR lines get (multi-column front pages differ from
    drawing order); sets generated before line boxes were recorded keep the drawing order."""
    lines = page["text"].split("\n")
    boxes = page.get("line_boxes")
    if not boxes or len(boxes) != len(lines):
        return page["text"]
    return "\n".join(item["text"] for item in reading_order([{"text": t, "box": b} for t, b in zip(lines, boxes)]))


def label_found(part: dict[str, Any], lines: list[dict[str, Any]]) -> bool:
    x, y = part["label"]
    for line in lines:
        x0, y0, x1, y1 = line["box"]
        if x0 - LABEL_TOL_PT <= x <= x1 + LABEL_TOL_PT and y0 - LABEL_TOL_PT <= y <= y1 + LABEL_TOL_PT \
                and str(part["number"]) in re.findall(r"\d+", normalize_text(line["text"])):
            return True
    return False


def score_document(truth: dict[str, Any], layers: Mapping[int, dict[str, Any] | None]) -> dict[str, Any]:
    """Edit distances per role, labels found and figure IoUs of one document."""
    out: dict[str, Any] = {"distance": {}, "chars": {}, "labels": [0, 0], "figures": [], "missing_pages": 0}
    for page in truth["pages"]:
        layer = layers.get(page["page"])
        figures = [f for f in truth["figures"] if f["page"] == page["page"]]
        role = ROLE_NAMES.get(page["role"], page["role"])
        if layer is None:
            out["missing_pages"] += 1
            continue
        if page["role"] in TEXT_ROLES:
            gold = normalize_text(truth_text(page))
            skip = 0.0 if page["role"] == "abstract" else HEADER_SHARE * layer["height"]
            read = normalize_text(layer_text(layer, skip_top=skip))
        else:
            gold = normalize_text(drawing_truth_text(figures))
            read = normalize_text(layer_text(layer, skip_top=HEADER_SHARE * layer["height"]))
        out["distance"][role] = out["distance"].get(role, 0) + edit_distance(gold, read)
        out["chars"][role] = out["chars"].get(role, 0) + len(gold)
        detected = {f["number"]: f for f in layer["figures"] if f["number"] is not None}
        for figure in figures:
            for part in figure["parts"]:
                out["labels"][0] += label_found(part, layer["lines"])
                out["labels"][1] += 1
            found = detected.get(figure["figure"])
            overlap = iou(found["box"], true_figure_box(figure)) if found and not found["fallback"] else 0.0
            out["figures"].append({"document": truth["document"], "figure": figure["figure"], "iou": overlap,
                                   "fallback": bool(found and found["fallback"]), "found": overlap >= FOUND_IOU})
    return out


def score_split(data_dir: Path, split: str, documents: Mapping[str, Document], result: OcrResult) -> dict[str, Any]:
    """Scores over every document of the split that has a truth file and a text layer."""
    distance: dict[str, int] = {}
    chars: dict[str, int] = {}
    labels, figures, missing, scored = [0, 0], [], 0, 0
    for name, document in sorted(documents.items()):
        truth_file = Path(data_dir) / split / "truth" / f"{Path(name).stem}.json"
        if not truth_file.is_file():
            continue
        truth = json.loads(truth_file.read_text(encoding="utf-8"))
        layers = {page: result.layer((name, page)) for page in range(1, document.page_count + 1)}
        doc = score_document(truth, layers)
        scored += 1
        for role, value in doc["distance"].items():
            distance[role] = distance.get(role, 0) + value
            chars[role] = chars.get(role, 0) + doc["chars"][role]
        labels = [labels[0] + doc["labels"][0], labels[1] + doc["labels"][1]]
        figures += doc["figures"]
        missing += doc["missing_pages"]
    text_chars = sum(chars.get(r, 0) for r in TEXT_ROLES)
    return {
        "documents_scored": scored, "pages_without_layer": missing,
        "cer": {role: round(distance[role] / chars[role], 5) if chars[role] else None for role in sorted(chars)},
        "cer_text": round(sum(distance.get(r, 0) for r in TEXT_ROLES) / text_chars, 5) if text_chars else None,
        "label_recall": round(labels[0] / labels[1], 5) if labels[1] else None, "labels": labels[1],
        "figures_found": round(sum(f["found"] for f in figures) / len(figures), 5) if figures else None,
        "figure_iou": round(sum(f["iou"] for f in figures) / len(figures), 5) if figures else None,
        "figures_true": len(figures), "figure_fallbacks": sum(f["fallback"] for f in figures),
        "figures_missed": [f"{f['document']} 图{f['figure']} (IoU {f['iou']:.2f})" for f in figures if not f["found"]][:20],
    }


def format_scores(scores: dict[str, Any]) -> str:
    cer = ", ".join(f"{role} {value:.2%}" for role, value in scores["cer"].items() if value is not None)
    lines = [f"truth: {scores['documents_scored']} documents; CER {cer}; text pages {scores['cer_text']:.2%}"
             if scores["cer_text"] is not None else f"truth: {scores['documents_scored']} documents; no text pages",
             f"truth: label recall {scores['label_recall']:.2%} of {scores['labels']} part numbers"
             if scores["label_recall"] is not None else "truth: no part labels",
             f"truth: figures found and labelled {scores['figures_found']:.2%} of {scores['figures_true']}, "
             f"mean IoU {scores['figure_iou']:.3f}, {scores['figure_fallbacks']} whole-page fallbacks"
             if scores["figures_true"] else "truth: no figures"]
    return "\n".join(lines)
