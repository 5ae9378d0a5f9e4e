"""Document-level held-out split: deterministic, disjoint, and the check that proves it."""
from __future__ import annotations

import pytest

from patentqa.data.corpus import Question
from patentqa.data.split import LeakageError, assert_disjoint, split_documents, split_questions

DOCS = [f"CN{1000 + i}A.pdf" for i in range(50)]


def test_deterministic_and_order_independent() -> None:
    first = split_documents(DOCS, 0.2, seed=3)
    assert first == split_documents(list(reversed(DOCS)), 0.2, seed=3)
    assert len(first.heldout) == 10 and len(first.train) == 40
    assert not set(first.train) & set(first.heldout)
    assert split_documents(DOCS, 0.2, seed=4).heldout != first.heldout


def test_adding_a_document_moves_no_other() -> None:
    before = split_documents(DOCS, 0.2, seed=0)
    after = split_documents(DOCS + ["CN9999A.pdf"], 0.2, seed=0)
    moved = (set(before.heldout) - set(after.heldout)) | (set(before.train) - set(after.train))
    assert len(moved) <= 1  # at most one document crosses because the held-out count rounds


def test_questions_follow_their_documents() -> None:
    questions = [Question(f"q{i}", "问题", DOCS[i % 50]) for i in range(200)]
    train, heldout = split_questions(questions, split_documents(DOCS, 0.25, seed=0))
    assert len(train) + len(heldout) == 200
    assert {q.document for q in train}.isdisjoint({q.document for q in heldout})


def test_leak_is_caught() -> None:
    with pytest.raises(LeakageError):
        assert_disjoint([Question("a", "x", "d.pdf")], [Question("b", "y", "d.pdf")])
    with pytest.raises(ValueError):
        split_documents(DOCS, 1.0, seed=0)
