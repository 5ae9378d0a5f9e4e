"""The answer pipeline: the seed's flow, every stage batched over a chunk of questions.

route (rules, or the seed's LLM classifier) → retrieve → answer → shorten (the seed's style
pass, optional) → deterministic cleanup. Every reply of the answer call and the style pass is read by
``think_answer`` first: a Thinking checkpoint's ``<think>…</think>`` is dropped and the text after it is
the answer (``think``: ``closed``; ``unclosed``: the block never closed, scored as an empty answer and
counted in the report); ``raw_answer`` keeps the whole reply. A chain (``prompt.target=cot``) is cut to its final
"答案：" line first (``final_line`` false: none, its last line was taken); a round-A reply is
read as an option letter (``unparsed`` when it names none or several). Questions are processed in fixed chunks in input
order; each finished chunk is appended to ``predictions.jsonl`` in one write, so a killed
run resumes at the first unfinished chunk and the file equals an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from patentqa.cli import InputError
from patentqa.config import cfg_get
from patentqa.data.chains import final_answer
from patentqa.data.choices import parse_choice
from patentqa.data.corpus import Document, Question, submission_ids
from patentqa.data.prompts import (PromptConfig, classifier_prompt, parse_classifier_answer, prompt_form,
                                   style_prompt)
from patentqa.data.questions import parse_question
from patentqa.data.sft import question_prompt
from patentqa.infer.engine import Engine, Sampling
from patentqa.tracking import atomic_write


@dataclass(frozen=True)
class PipelineSettings:
    """Which stages run (``pipeline`` config block) and how much each may generate."""

    router: str = "rules"        # rules | llm (the seed's Y/N classifier call)
    style_pass: bool = True      # the seed's second call that shortens the raw answer
    cleanup: bool = True         # deterministic cleanup of markdown, prefixes, trailing punctuation
    chunk_size: int = 32         # questions per chunk: the unit of batching and of resume
    max_new_tokens: int = 64
    style_max_new_tokens: int = 32
    thinking: bool = False       # model.thinking: the chat template opens <think> in the prompt (think_answer)

    @classmethod
    def from_cfg(cls, pipeline: Any, infer: Any, model: Any = None) -> PipelineSettings:
        return cls(router=pipeline.router, style_pass=bool(pipeline.style_pass), cleanup=bool(pipeline.cleanup),
                   chunk_size=int(pipeline.chunk_size), max_new_tokens=int(infer.max_new_tokens),
                   style_max_new_tokens=int(pipeline.style_max_new_tokens),
                   thinking=bool(cfg_get(model, "thinking", False)))


@dataclass
class AnswerContext:
    """What answering needs besides the engine: prompts, pages, retrieval, style examples."""

    prompt_config: PromptConfig
    documents: dict[str, Document]
    pages: dict[tuple[str, int], Path]
    retriever: Any
    style_answers: dict[str, list[str]] = field(default_factory=dict)
    layout: Any = None  # patentqa.data.ocr.layout.Layout when the prompt variant needs OCR text or crops


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def think_answer(reply: str, opened: bool = False) -> tuple[str, str | None]:
    """(answer, how the reply's reasoning block ended): the text after the last ``</think>``, stripped, and
    ``"closed"``; ``("", "unclosed")`` when a ``<think>`` never closed (generation stopped mid-reasoning:
    there is no answer yet, so it scores as empty, and the report counts it); ``(reply, None)``, unchanged,
    when the reply has no block (every Instruct model's reply).

    ``opened``: the prompt opened the block itself (``model.thinking``: a Qwen3-VL-*-Thinking chat template
    ends the generation prompt with ``<think>`` and a newline, so its replies hold only the closing tag). A reply
    without ``</think>`` that was cut at max_new_tokens (``Reply.truncated``) is then unclosed too; one that
    ended by itself is the answer (a checkpoint tuned on plain answers answers without a block). The last
    ``</think>`` counts, as Qwen3's model cards parse a reply (after the last ``</think>`` token, id 151668).
    """
    text = str(reply)
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        return text[close + len(THINK_CLOSE):].strip(), "closed"
    if THINK_OPEN in text or (opened and getattr(reply, "truncated", None)):
        return "", "unclosed"
    return text, None


_PREFIX = re.compile(r"^(?:最终答案|正确答案|答案|回答|答)\s*[:：]\s*")
_TRAILING = "。.!！,，;；:：、 \n\t"


def cleanup(text: str) -> str:
    """Deterministic answer cleanup: markdown, bold, "答案：" prefixes, quotes, trailing punctuation."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S).replace("**", "").replace("__", "")
    lines = [re.sub(r"^\s*(?:#+|[-*•]|\d+[.、)])\s+", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    marked = [line for line in lines if _PREFIX.match(line)]  # an explicit "答案：" line wins
    text = _PREFIX.sub("", marked[-1] if marked else " ".join(lines)).strip()
    text = text.strip("\"'“”‘’「」【】[]").strip()
    return text.rstrip(_TRAILING).strip()


def final_prediction(answer: str, options: Any, clean: bool) -> dict[str, Any]:
    """The scored prediction of an answer: a round-A reply read as the option letter it names ("" when it names
    none or several, ``unparsed``); an open answer cleaned up (``pipeline.cleanup``)."""
    if options:
        choice = parse_choice(answer, options)
        return {"prediction": choice.letter or "", "choice": choice.how, "unparsed": choice.letter is None}
    return {"prediction": cleanup(answer) if clean else str(answer)}


def read_reply(reply: str, thinking: bool = False, cot: bool = False) -> tuple[str, str | None, bool | None]:
    """(answer, think, final_line) of a reply: ``think_answer`` first, then a chain (``cot``) cut to its "答案："
    line (``final_line`` false: none, its last line was taken; None: no chain read, as for an unclosed think)."""
    answer, think = think_answer(reply, thinking)
    if cot and think != "unclosed":  # no answer at all: counted once, as an unclosed think
        answer, final_line = final_answer(answer)
        return answer, think, final_line
    return answer, think, None


def reply_prediction(reply: str, options: Any = None, *, thinking: bool = False, cot: bool = False,
                     clean: bool = True) -> str:
    """A reply read as ``answer_chunk`` reads it when there is no style pass (``read_reply``, then
    ``final_prediction``). What GRPO's reward scores (patentqa/train/reward.py)."""
    return final_prediction(read_reply(reply, thinking, cot)[0], options, clean)["prediction"]


def _route(chunk: list[Question], engine: Engine, settings: PipelineSettings, adapter: str | None) -> list[dict]:
    """Form per question, plus the classifier's raw output when the LLM router is on."""
    routes = [{"form": prompt_form(q.question), "classifier": None} for q in chunk]
    if settings.router != "llm":
        return routes
    page_questions = [i for i, q in enumerate(chunk) if parse_question(q.question).page is not None]
    outputs = engine.generate([classifier_prompt(chunk[i].question) for i in page_questions],
                              Sampling(max_new_tokens=8), adapter)
    for i, output in zip(page_questions, outputs):
        verdict, think = think_answer(output, settings.thinking)  # a Thinking model's Y/N comes after </think>
        figure_only = None if think == "unclosed" else parse_classifier_answer(verdict)  # unfinished: the rules
        routes[i] = {"form": prompt_form(chunk[i].question, figure_only), "classifier": str(output)}
    return routes


def answer_chunk(chunk: list[Question], ctx: AnswerContext, engine: Engine, settings: PipelineSettings,
                 adapter: str | None = None, timings: Counter | None = None) -> list[dict[str, Any]]:
    """Run every stage over one chunk; one prediction record per question, in order."""
    timings = timings if timings is not None else Counter()
    clock = time.perf_counter()
    routes = _route(chunk, engine, settings, adapter)
    timings["route"] += time.perf_counter() - clock
    clock = time.perf_counter()
    prompts = [question_prompt(ctx.prompt_config, q, ctx.documents[q.document], ctx.pages, ctx.retriever, r["form"],
                               layout=ctx.layout) for q, r in zip(chunk, routes)]
    timings["retrieve"] += time.perf_counter() - clock
    clock = time.perf_counter()
    raw = engine.generate(prompts, Sampling(max_new_tokens=settings.max_new_tokens), adapter)
    timings["answer"] += time.perf_counter() - clock
    clock = time.perf_counter()
    # the one place a reply becomes an answer; a chain's "答案：" line (else its last line) is the answer
    read = [read_reply(reply, settings.thinking, ctx.prompt_config.target == "cot") for reply in raw]
    answers, thinks, final_lines = [r[0] for r in read], [r[1] for r in read], [r[2] for r in read]
    styled = list(answers)
    # round A letters need no shortening; an unclosed think has nothing to shorten (it stays empty)
    open_answers = [i for i, q in enumerate(chunk) if not q.options and thinks[i] != "unclosed"]
    if settings.style_pass and open_answers:
        shortened = engine.generate([style_prompt(answers[i], ctx.style_answers.get(chunk[i].id, [])) for i in open_answers],
                                    Sampling(max_new_tokens=settings.style_max_new_tokens), adapter)
        for i, text in zip(open_answers, shortened):
            rewrite, think = think_answer(text, settings.thinking)
            styled[i] = answers[i] if think == "unclosed" else rewrite  # an unfinished rewrite keeps the answer
    timings["shorten"] += time.perf_counter() - clock
    records = []
    for question, route, prompt, raw_answer, answer, think, final_line, styled_answer in zip(
            chunk, routes, prompts, raw, answers, thinks, final_lines, styled):
        record = {"id": question.id, "document": question.document, "question": question.question,
                  "kind": parse_question(question.question).kind, "round": question.round, "form": route["form"],
                  "pages": [image.page for image in prompt.images], "classifier": route["classifier"],
                  "raw_answer": str(raw_answer), "truncated": getattr(raw_answer, "truncated", None),
                  "styled_answer": str(styled_answer) if settings.style_pass and not question.options else None,
                  "answer": question.answer, "final_line": final_line, "think": think}
        # round A: the letter the reply names ("" when none or several); an open answer: its rewrite, cleaned up
        record.update(final_prediction(answer if question.options else styled_answer, question.options,
                                       settings.cleanup))
        records.append(record)
    return records


def read_predictions(path: Path, repair: bool = True) -> list[dict[str, Any]]:
    """Finished records; a torn last line (killed mid-write) is cut off the file (``repair``), or only
    skipped (``repair=False``: for readers of a file another process may still be appending to)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        records.append(json.loads(line))
    if repair and end != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
    return records


def resumable(predictions: Path, questions: list[Question]) -> list[dict[str, Any]]:
    """The finished records of ``predictions`` if they answer the first of ``questions`` in order;
    ``InputError`` if the file holds other questions (another split's, or another dataset's)."""
    done = read_predictions(predictions)
    if [r["id"] for r in done] != [q.id for q in questions[:len(done)]]:
        raise InputError(f"{predictions}: holds answers to other questions than the {len(questions)} asked "
                         "(another split's or dataset's predictions); use another out_dir")
    return done


def record_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"


def append_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Append whole lines in one write and fsync: a chunk is either on disk or not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(record_line(r) for r in records).encode("utf-8")
    with open(path, "ab") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def answer_questions(questions: list[Question], ctx: AnswerContext, engine: Engine, settings: PipelineSettings,
                     predictions: Path, adapter: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Answer every question into ``predictions`` (resuming what is there); return a summary."""
    done = resumable(predictions, questions)
    timings: Counter = Counter()
    started = time.perf_counter()
    # chunk boundaries are fixed from the start of the list, so a resumed run batches exactly as a fresh one
    first = (len(done) // settings.chunk_size) * settings.chunk_size
    if first != len(done):  # killed inside a chunk's write: redo that whole chunk
        atomic_write(predictions, "".join(record_line(r) for r in done[:first]).encode("utf-8"))
        done = done[:first]
    with tqdm(total=len(questions), initial=len(done), unit="q", desc="answer", disable=not progress) as bar:
        for start in range(first, len(questions), settings.chunk_size):
            chunk = questions[start:start + settings.chunk_size]
            append_records(predictions, answer_chunk(chunk, ctx, engine, settings, adapter, timings))
            bar.update(len(chunk))
    records = read_predictions(predictions)
    seconds = time.perf_counter() - started
    answered = len(questions) - len(done)
    return {"questions": len(records), "resumed_after": len(done), "answered_now": answered,
            "seconds": round(seconds, 2), "questions_per_s": round(answered / seconds, 3) if answered else None,
            "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
            **record_counts(records)}


def record_counts(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """How many answers of each question kind and prompt form (the summary's breakdown)."""
    return {"kinds": dict(Counter(r["kind"] for r in records)), "forms": dict(Counter(r["form"] for r in records))}


def write_submission(path: Path, questions: list[Question], records: list[dict[str, Any]]) -> None:
    """The competition's form: one {"id", "answer"} per input question, in input order, none missing
    (with ``question_idx`` too where the input named its questions so: ``corpus.submission_ids``)."""
    by_id = {r["id"]: r["prediction"] for r in records}
    missing = [q.id for q in questions if q.id not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} question(s) have no prediction, e.g. {missing[:5]}")
    lines = [json.dumps({**submission_ids(q), "answer": by_id[q.id]}, ensure_ascii=False) for q in questions]
    atomic_write(path, ("\n".join(lines) + "\n").encode("utf-8"))
