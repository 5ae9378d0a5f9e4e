"""Document-level split into train / dev / test: no document has questions on two sides.

The seed split rows at random, so the 1-image and 3-image rows of one question (and
questions of one patent) landed on both sides. Here whole documents are assigned by a
seeded hash of their name: deterministic for (seed, ratios), independent of input order,
and adding a document moves no other one (beyond the rounding of the split sizes).
``dev`` picks checkpoints; ``test`` is touched only for final reports.

K-fold (``data.folds=K``, ``data.fold=k``): the test documents are drawn as above,
the rest are dealt round-robin in the same seeded order into K folds, and fold k is the dev
split. Folds are document-disjoint, fixed by (seed, K) and cover every non-test document once,
so the K fold models together answer every labelled non-test question once ("out of fold").
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from patentqa.data.corpus import Question

SPLITS: tuple[str, ...] = ("train", "dev", "test")


@dataclass(frozen=True)
class DocumentSplit:
    """Document names per split."""

    train: tuple[str, ...]
    dev: tuple[str, ...]
    test: tuple[str, ...]

    def of(self, split: str) -> tuple[str, ...]:
        return getattr(self, split)


class LeakageError(AssertionError):
    """A document, question id or question text appears on two sides of a split."""


def _rank(seed: int, document: str) -> str:
    return hashlib.sha256(f"{seed}:{document}".encode()).hexdigest()


def _count(ratio: float, n: int) -> int:
    return min(max(round(ratio * n), 1), n - 1) if ratio > 0 and n > 1 else 0


def split_documents(documents: Iterable[str], dev_ratio: float, test_ratio: float, seed: int,
                    folds: int | None = None, fold: int = 0) -> DocumentSplit:
    """Assign documents to splits: ``round(ratio * n)`` each for dev and test (≥1 when ratio > 0);
    with ``folds``, dev is fold ``fold`` of the non-test documents (``dev_ratio`` unused)."""
    if dev_ratio < 0 or test_ratio < 0 or dev_ratio + test_ratio >= 1:
        raise ValueError(f"need 0 <= dev, test and dev + test < 1; got dev={dev_ratio}, test={test_ratio}")
    names = sorted(set(documents))
    ranked = sorted(names, key=lambda name: _rank(seed, name))
    n_test = _count(test_ratio, len(names))
    test = set(ranked[:n_test])
    if folds:
        rest = ranked[n_test:]
        if not 2 <= folds <= len(rest):
            raise ValueError(f"data.split.folds={folds} needs 2 <= folds <= {len(rest)} (the non-test documents)")
        if not 0 <= fold < folds:
            raise ValueError(f"data.split.fold={fold} must be in 0..{folds - 1}")
        dev = {name for i, name in enumerate(rest) if i % folds == fold}
    else:
        n_dev = _count(dev_ratio, len(names) - n_test)
        dev = set(ranked[n_test:n_test + n_dev])
    return DocumentSplit(train=tuple(n for n in names if n not in test | dev),
                         dev=tuple(n for n in names if n in dev), test=tuple(n for n in names if n in test))


def split_questions(questions: list[Question], split: DocumentSplit) -> dict[str, list[Question]]:
    """Questions per split, each in input order; proves no leakage."""
    side = {doc: name for name in SPLITS for doc in split.of(name)}
    parts: dict[str, list[Question]] = {name: [] for name in SPLITS}
    for question in questions:
        parts[side[question.document]].append(question)
    assert_disjoint(parts)
    return parts


def assert_disjoint(parts: dict[str, list[Question]]) -> None:
    """Raise ``LeakageError`` if a document, id or question text is in two splits."""
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for what, key in (("documents", lambda q: q.document), ("ids", lambda q: q.id),
                              ("question texts", lambda q: (q.document, q.question))):
                shared = {key(q) for q in parts[a]} & {key(q) for q in parts[b]}
                if shared:
                    raise LeakageError(f"{a}/{b} share {what}: {sorted(map(str, shared))[:5]}")


def fold_of(documents: Iterable[str], test_ratio: float, seed: int, folds: int) -> dict[str, int]:
    """Fold number of every non-test document (the assignment ``split_documents`` uses)."""
    names = sorted(set(documents))
    ranked = sorted(names, key=lambda name: _rank(seed, name))
    return {name: i % folds for i, name in enumerate(ranked[_count(test_ratio, len(names)):])}
