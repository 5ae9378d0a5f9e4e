"""Reading and validating a dataset in the CCKS layout.

``DIR/{split}/{split}.jsonl`` holds one question per line (``question``, ``document``,
``answer`` in train, optional ``id`` or ``question_idx`` and ``options``); ``DIR/{split}/documents/*.pdf``
the scanned patents. A row's id is its ``id``, else its ``question_idx`` (the real round-B files
number their rows so), else a hash of document and question; ``submission_ids`` gives a
submission line the fields the input named its question by. ``read_split`` returns the valid questions, the documents they use and
every problem found, each with its file, line and reason. By default bad rows are
skipped and counted; ``strict=True`` raises ``DataError`` listing all of them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pymupdf

from patentqa.data.choices import check_options, normalize_letter
from patentqa.data.questions import asked_page

MAX_QUESTION_CHARS = 2000  # longest real question is ~150 characters
_KNOWN_FIELDS = {"id", "question", "document", "answer", "options"}
ID_FIELDS = ("id", "question_idx")  # what names a question in the input, first present wins; kept in submissions


class DataError(ValueError):
    """Raised in strict mode when a dataset has problems."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, and where."""

    file: str
    reason: str
    line: int | None = None
    id: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class Document:
    """A readable patent PDF."""

    name: str
    path: Path
    sha256: str
    page_count: int


@dataclass(frozen=True)
class Question:
    """One valid question row; ``extra`` keeps fields beyond the CCKS ones (e.g. evidence_pages)."""

    id: str
    question: str
    document: str
    answer: str | None = None
    options: tuple[str, ...] | None = None
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def round(self) -> str:
        """"a" (multiple choice: options, a letter as answer) or "b" (open answer)."""
        return "a" if self.options else "b"


@dataclass
class SplitData:
    """The result of reading one split: what is usable and what is wrong."""

    split: str
    questions: list[Question]
    documents: dict[str, Document]
    problems: list[Problem]
    rows_read: int
    other_rounds: int = 0  # valid questions of a round the run leaves out (data.rounds)

    def summary(self) -> dict[str, Any]:
        return {"split": self.split, "rows_read": self.rows_read, "questions": len(self.questions),
                "documents": len(self.documents), "problems": len(self.problems),
                "rows_skipped": self.rows_read - len(self.questions) - self.other_rounds,
                "other_rounds": self.other_rounds,
                "rounds": {r: sum(q.round == r for q in self.questions) for r in ("a", "b")}}


def question_id(document: str, question: str) -> str:
    """Stable id for rows that carry none: a hash of document and question text."""
    return hashlib.sha1(f"{document}\n{question}".encode()).hexdigest()[:16]


def row_id(row: dict[str, Any]) -> str | None:
    """The id a row carries (``id``, else ``question_idx``) as a string, or None."""
    return next((str(row[name]) for name in ID_FIELDS if row.get(name) is not None), None)


def submission_ids(question: Question) -> dict[str, Any]:
    """A submission line's id fields: ``id``, plus ``question_idx`` as the input wrote it (an int) when it had one."""
    ids: dict[str, Any] = {"id": question.id}
    if "question_idx" in question.extra:
        ids["question_idx"] = question.extra["question_idx"]
    return ids


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inspect_pdf(path: Path) -> Document | str:
    """Open a PDF and return its ``Document``, or the reason it cannot be used."""
    if not path.is_file():
        return "missing PDF"
    if path.stat().st_size == 0:
        return "zero-byte file"
    with open(path, "rb") as handle:
        if b"%PDF-" not in handle.read(1024):
            return "not a PDF (no %PDF- header)"
        handle.seek(max(0, path.stat().st_size - 1024))
        has_eof = b"%%EOF" in handle.read()
    try:
        with pymupdf.open(path) as doc:
            if doc.needs_pass or doc.is_encrypted:
                return "encrypted PDF"
            if doc.is_repaired and not has_eof:  # MuPDF rebuilds a cut file silently
                return "truncated PDF (no %%EOF; damaged pages would render blank)"
            if doc.page_count == 0:
                return "PDF has no pages"
            for index in range(doc.page_count):  # a truncated file may open but lose pages
                doc.load_page(index)
            pages = doc.page_count
    except Exception as error:  # PyMuPDF raises several types for corrupt files
        return f"unreadable PDF ({type(error).__name__}: {error})"
    return Document(name=path.name, path=path, sha256=file_sha256(path), page_count=pages)


def _check_row(row: Any, require_answer: bool) -> str | None:
    """The reason a parsed JSON value is not a valid question row, or None."""
    if not isinstance(row, dict):
        return f"row is a JSON {type(row).__name__}, expected an object"
    for name in ("question", "document"):
        if name not in row:
            return f"missing field '{name}'"
        if not isinstance(row[name], str):
            return f"field '{name}' must be a string, got {type(row[name]).__name__}"
    if not row["question"].strip():
        return "empty question"
    if len(row["question"]) > MAX_QUESTION_CHARS:
        return f"question too long ({len(row['question'])} > {MAX_QUESTION_CHARS} characters)"
    if "\x00" in row["question"] or "\x00" in row["document"]:
        return "NUL character in text"
    document = row["document"]
    if not document or Path(document).name != document or document in (".", ".."):
        return f"document must be a bare file name, got {document!r}"
    for name in ID_FIELDS:
        if name in row and (isinstance(row[name], bool) or not isinstance(row[name], (str, int))):
            return f"field '{name}' must be a string or integer, got {type(row[name]).__name__}"
    if require_answer and "answer" not in row:
        return "missing answer (required in this split)"
    if "answer" in row and not isinstance(row["answer"], str):
        return f"field 'answer' must be a string, got {type(row['answer']).__name__}"
    options = row.get("options")
    if options is not None:
        if not (isinstance(options, list) and all(isinstance(o, str) for o in options)):
            return "field 'options' must be a list of strings"
        return check_options(options, row.get("answer"))  # round A: letters A, B, C... and the answer among them
    return None


def read_split(data_dir: str | Path, split: str, *, strict: bool = False,
               require_answer: bool | None = None) -> SplitData:
    """Read and validate ``data_dir/split``; ``require_answer`` defaults to ``split == "train"``."""
    root = Path(data_dir) / split
    jsonl, doc_dir = root / f"{split}.jsonl", root / "documents"
    require_answer = split == "train" if require_answer is None else require_answer
    result = SplitData(split=split, questions=[], documents={}, problems=[], rows_read=0)
    if not jsonl.is_file():
        result.problems.append(Problem(str(jsonl), "question file not found"))
        return _finish(result, strict)
    seen_ids: dict[str, int] = {}
    pdf_status: dict[str, Document | str] = {}
    with open(jsonl, encoding="utf-8", errors="replace") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            result.rows_read += 1
            problem = _read_row(line, line_no, str(jsonl), require_answer, doc_dir, seen_ids, pdf_status, result)
            if problem:
                result.problems.append(problem)
    return _finish(result, strict)


def _read_row(line: str, line_no: int, file: str, require_answer: bool, doc_dir: Path,
              seen_ids: dict[str, int], pdf_status: dict[str, Document | str], result: SplitData) -> Problem | None:
    """Validate one line; append the question to ``result`` or return its problem."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return Problem(file, f"invalid JSON ({error.msg} at column {error.colno})", line_no)
    reason = _check_row(row, require_answer)
    if reason:
        return Problem(file, reason, line_no, row_id(row) if isinstance(row, dict) else None)
    qid = row_id(row) or question_id(row["document"], row["question"])
    if qid in seen_ids:
        return Problem(file, f"duplicate id {qid!r} (first on line {seen_ids[qid]})", line_no, qid)
    seen_ids[qid] = line_no
    name = row["document"]
    if name not in pdf_status:
        pdf_status[name] = inspect_pdf(doc_dir / name)
    status = pdf_status[name]
    if isinstance(status, str):
        return Problem(file, f"document {name}: {status}", line_no, qid)
    page = asked_page(row["question"])
    if page is not None and not 1 <= page <= status.page_count:
        return Problem(file, f"asks about page {page} but {name} has {status.page_count} pages", line_no, qid)
    result.documents[name] = status
    options = tuple(row["options"]) if row.get("options") is not None else None
    answer = row.get("answer")
    if options is not None and answer is not None:  # round A: "B." / " b " -> "B"
        answer = normalize_letter(answer)
    extra = {k: v for k, v in row.items() if k not in _KNOWN_FIELDS}
    result.questions.append(Question(qid, row["question"], name, answer, options, line_no, extra))
    return None


def _finish(result: SplitData, strict: bool) -> SplitData:
    if strict and result.problems:
        listing = "\n".join(f"  {p}" for p in result.problems)
        raise DataError(f"{len(result.problems)} problem(s) in split '{result.split}':\n{listing}")
    return result


def problems_as_dicts(problems: list[Problem]) -> list[dict[str, Any]]:
    return [asdict(p) for p in problems]
