"""A CCKS-layout dataset salted with every kind of broken input the corpus layer must report."""
from __future__ import annotations

import json
from pathlib import Path

import pymupdf


def scan_pdf(path: Path, pages: int, seed: int = 0) -> None:
    """An image-only PDF of A4 pages, each a gray 'scan' with a dark box (no text layer)."""
    doc = pymupdf.open()
    for index in range(pages):
        page = doc.new_page(width=595, height=842)
        pixmap = pymupdf.Pixmap(pymupdf.csGRAY, pymupdf.IRect(0, 0, 248, 351), 0)
        pixmap.clear_with(235)
        pixmap.set_rect(pymupdf.IRect(30 + 10 * index, 40, 120 + seed, 200), (20,))
        page.insert_image(page.rect, pixmap=pixmap)
    doc.save(path, garbage=3, deflate=True, no_new_id=True)


# (row as written, the problem reason expected on its line or None when valid)
SALTED_ROWS: list[tuple[object, str | None]] = [
    ({"id": "q1", "question": "在文件中第3页的图1中，编号为2的部件是什么？", "document": "good.pdf", "answer": "滤网"}, None),
    ({"id": "q2", "question": "在文件中第9页的图1中，编号为2的部件是什么？", "document": "good.pdf", "answer": "x"}, "has 5 pages"),
    ('{"id": "q3", "question": "broken', "invalid JSON"),
    ({"id": "q4", "question": 42, "document": "good.pdf", "answer": "x"}, "must be a string"),
    ({"id": "q5", "question": "  ", "document": "good.pdf", "answer": "x"}, "empty question"),
    ({"id": "q6", "question": "根据专利文本，主要功能是什么？", "document": "good.pdf"}, "missing answer"),
    ({"id": "q1", "question": "根据专利文本，用途是什么？", "document": "good.pdf", "answer": "x"}, "duplicate id"),
    ({"id": "q8", "question": "根据专利文本，用途是什么？", "document": "absent.pdf", "answer": "x"}, "missing PDF"),
    ({"id": "q9", "question": "根据专利文本，用途是什么？", "document": "zero.pdf", "answer": "x"}, "zero-byte"),
    ({"id": "q10", "question": "根据专利文本，用途是什么？", "document": "text.pdf", "answer": "x"}, "not a PDF"),
    ({"id": "q11", "question": "根据专利文本，用途是什么？", "document": "encrypted.pdf", "answer": "x"}, "encrypted"),
    ({"id": "q12", "question": "根据专利文本，用途是什么？", "document": "truncated.pdf", "answer": "x"}, "truncated"),
    ({"id": "q13", "question": "根据专利文本，用途是什么？", "document": "../secret.pdf", "answer": "x"}, "bare file name"),
    ({"id": "q14", "question": "问" * 10_000, "document": "good.pdf", "answer": "x"}, "too long"),
    ({"id": "q15", "question": "根据专利文本\x00，用途是什么？", "document": "good.pdf", "answer": "x"}, "NUL"),
    (["not", "an", "object"], "expected an object"),
    ({"id": "q17", "question": "根据专利文本，用途是什么？", "document": "good.pdf", "answer": 7}, "must be a string"),
    ({"id": "q18", "question": "根据专利文本🙂，该装置的主要功能是什么？", "document": "good.pdf", "answer": "过滤"}, None),
]


def make_salted_dataset(root: Path, split: str = "train") -> Path:
    """Write the salted split under ``root`` and return ``root``."""
    docs = root / split / "documents"
    docs.mkdir(parents=True)
    scan_pdf(docs / "good.pdf", pages=5)
    (docs / "zero.pdf").write_bytes(b"")
    (docs / "text.pdf").write_text("this is a text file, not a PDF\n")
    scan_pdf(root / "plain.pdf", pages=2, seed=1)
    with pymupdf.open(root / "plain.pdf") as plain:
        plain.save(docs / "encrypted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    data = (root / "plain.pdf").read_bytes()
    (docs / "truncated.pdf").write_bytes(data[: len(data) // 2])
    (root / "secret.pdf").write_bytes(data)  # what ../secret.pdf would escape to
    with open(root / split / f"{split}.jsonl", "w", encoding="utf-8") as out:
        for row, _ in SALTED_ROWS:
            out.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return root
