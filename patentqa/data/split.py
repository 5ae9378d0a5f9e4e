"""Document-level held-out split: no document has questions on both sides.

The seed split rows at random, so the 1-image and 3-image rows of one question (and
questions of one patent) landed on both sides. Here whole documents are assigned by a
seeded hash of their name: deterministic for (seed, ratio), independent of input order,
and adding a document never moves another one.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from patentqa.data.corpus import Question


@dataclass(frozen=True)
class DocumentSplit:
    """Documents used for training and documents held out for scoring checkpoints."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]


class LeakageError(AssertionError):
    """A document (or question id) appears on both sides of a split."""


def _rank(seed: int, document: str) -> str:
    return hashlib.sha256(f"{seed}:{document}".encode()).hexdigest()


def split_documents(documents: Iterable[str], ratio: float, seed: int) -> DocumentSplit:
    """Hold out ``round(ratio * n)`` documents (at least one when ratio > 0 and n > 1)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"held-out ratio must be in [0, 1), got {ratio}")
    names = sorted(set(documents))
    n_heldout = round(ratio * len(names))
    if ratio > 0 and len(names) > 1:
        n_heldout = min(max(n_heldout, 1), len(names) - 1)
    ranked = sorted(names, key=lambda name: _rank(seed, name))
    heldout = set(ranked[:n_heldout])
    return DocumentSplit(train=tuple(n for n in names if n not in heldout),
                         heldout=tuple(n for n in names if n in heldout))


def split_questions(questions: list[Question], split: DocumentSplit) -> tuple[list[Question], list[Question]]:
    """(train questions, held-out questions), each in input order; proves no leakage."""
    heldout_docs = set(split.heldout)
    train = [q for q in questions if q.document not in heldout_docs]
    heldout = [q for q in questions if q.document in heldout_docs]
    assert_disjoint(train, heldout)
    return train, heldout


def assert_disjoint(train: list[Question], heldout: list[Question]) -> None:
    """Raise ``LeakageError`` if any document or question id is on both sides."""
    shared_docs = {q.document for q in train} & {q.document for q in heldout}
    shared_ids = {q.id for q in train} & {q.id for q in heldout}
    if shared_docs or shared_ids:
        raise LeakageError(f"split leaks: documents {sorted(shared_docs)[:5]}, ids {sorted(shared_ids)[:5]}")
