"""SFT rows and evaluation sets, written from the one prompt builder.

Every row goes through ``build_prompt`` → ``to_swift_row``; the evaluation sets store the
same structured prompts, so generation at scoring time sees exactly what training saw.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from patentqa.data.chains import cot_response
from patentqa.data.corpus import Document, Question
from patentqa.data.prompts import (IMAGE_TAG, PageImage, Prompt, PromptConfig, build_prompt, prompt_form,
                                   prompt_to_json, to_swift_row)
from patentqa.data.questions import parse_question
from patentqa.tracking import atomic_write


class ContextRetriever(Protocol):
    def context_pages(self, question: Question, document: Document) -> list[int]: ...


class RowError(ValueError):
    """An SFT row that swift would mis-read (tag/image mismatch, missing image)."""


@dataclass(frozen=True)
class PromptedQuestion:
    """A question with the prompt it is answered from."""

    question: Question
    kind: str
    prompt: Prompt


def question_prompt(config: PromptConfig, question: Question, document: Document,
                    pages: dict[tuple[str, int], Path], retriever: ContextRetriever, form: str | None = None,
                    layout: Any = None) -> Prompt:
    """Route, retrieve and build the prompt of one question (form from routing unless given).

    ``layout`` (``patentqa.data.ocr.layout.Layout``) gives the OCR text and figure crops that the
    ``figure_crop`` and ``ocr_text`` variants need.
    """
    if config.uses_layout and layout is None:
        raise ValueError(f"prompt {config.name} needs the OCR layer: set data.ocr.enabled to auto or true")
    form = form or prompt_form(question.question)
    asked_no = parse_question(question.question).page

    def page_image(page: int) -> PageImage:
        text = layout.text(document.name, page) if config.ocr_text else None
        return PageImage(page, str(pages[(document.name, page)]), text)

    asked = page_image(asked_no) if asked_no else None
    if asked is not None and config.figure_crop:
        figure = layout.figure_for(question, document)
        if figure is not None:
            crop = layout.crop(document, asked_no, figure["box"], config.budget(form), config.min_pixels)
            asked = PageImage(asked_no, str(crop), asked.text)
    context = [] if form == "figure_only" else retriever.context_pages(question, document)
    return build_prompt(config, question.question, form, asked, [page_image(page) for page in context],
                        options=question.options)


def prompted(config: PromptConfig, questions: list[Question], documents: dict[str, Document],
             pages: dict[tuple[str, int], Path], retriever: ContextRetriever, layout: Any = None) -> list[PromptedQuestion]:
    """Questions with their inference prompts; questions whose pages failed to render are left out."""
    result = []
    for question in questions:
        document = documents[question.document]
        if all((document.name, p) in pages for p in range(1, document.page_count + 1)):
            result.append(PromptedQuestion(question, parse_question(question.question).kind,
                                           question_prompt(config, question, document, pages, retriever,
                                                           layout=layout)))
    return result


def sft_rows(config: PromptConfig, items: list[PromptedQuestion], documents: dict[str, Document],
             pages: dict[tuple[str, int], Path], retriever: ContextRetriever,
             all_page_questions_with_context: bool, layout: Any = None,
             chains: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The inference prompt of every question as a row; optionally (seed) every page question
    also with the asked page + retrieved pages when routing shows it the figure alone.
    ``chains`` (train rows of ``prompt.target=cot``): the response is the chain, then "答案：…"."""
    rows = []
    for item in items:
        rows.append(_row(item.question, item.kind, item.prompt, (chains or {}).get(item.question.id)))
        if all_page_questions_with_context and item.prompt.form == "figure_only":
            extra = question_prompt(config, item.question, documents[item.question.document], pages, retriever,
                                    form="with_context", layout=layout)
            rows.append(_row(item.question, item.kind, extra, (chains or {}).get(item.question.id)))
    return rows


def _row(question: Question, kind: str, prompt: Prompt, chain: str | None = None) -> dict[str, Any]:
    response = cot_response(chain, question.answer or "") if chain else question.answer or ""
    row = to_swift_row(prompt, response)
    row.update(id=question.id, document=question.document, kind=kind, form=prompt.form, chain=chain is not None)
    check_row(row)
    return row


def check_row(row: dict[str, Any]) -> None:
    """Swift fills ``<image>`` tags in order and silently prepends missing ones: check it here."""
    tags = sum(m["content"].count(IMAGE_TAG) for m in row["messages"])
    if tags != len(row["images"]):
        raise RowError(f"row {row.get('id')}: {tags} <image> tags but {len(row['images'])} images")
    missing = [path for path in row["images"] if not Path(path).is_file()]
    if missing:
        raise RowError(f"row {row.get('id')}: image files missing: {missing[:3]}")


def eval_record(item: PromptedQuestion, style_answers: list[str]) -> dict[str, Any]:
    """One question of an evaluation set: gold answer, kind and the prompt to generate from."""
    return {"id": item.question.id, "document": item.question.document, "question": item.question.question,
            "answer": item.question.answer, "kind": item.kind, "round": item.question.round,
            "options": list(item.question.options) if item.question.options else None, "pages": [i.page for i in item.prompt.images],
            "prompt": prompt_to_json(item.prompt), "style_answers": style_answers}


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write rows as JSONL (temp file + rename) unless identical content is there; return sha256."""
    data = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode()
    digest = hashlib.sha256(data).hexdigest()
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == digest):
        atomic_write(path, data)
    return digest
