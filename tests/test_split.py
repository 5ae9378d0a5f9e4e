"""Document-level split: deterministic, disjoint, and the check that proves it."""
from __future__ import annotations

import pytest

from patentqa.data.corpus import Question
from patentqa.data.split import LeakageError, assert_disjoint, split_documents, split_questions

DOCS = [f"CN{1000 + i}A.pdf" for i in range(50)]


def test_deterministic_and_order_independent() -> None:
    first = split_documents(DOCS, 0.2, 0.1, seed=3)
    assert first == split_documents(list(reversed(DOCS)), 0.2, 0.1, seed=3)
    assert (len(first.train), len(first.dev), len(first.test)) == (36, 9, 5)
    assert not set(first.train) & set(first.dev) and not set(first.dev) & set(first.test)
    assert split_documents(DOCS, 0.2, 0.1, seed=4).dev != first.dev


def test_adding_a_document_moves_few_others() -> None:
    before = split_documents(DOCS, 0.2, 0.2, seed=0)
    after = split_documents(DOCS + ["CN9999A.pdf"], 0.2, 0.2, seed=0)
    moved = {d for d in DOCS for s in ("train", "dev", "test") if (d in before.of(s)) != (d in after.of(s))}
    assert len(moved) <= 2  # only the rounding of the split sizes can move a document


def test_tiny_sets_keep_train_and_may_have_no_test() -> None:
    split = split_documents(DOCS[:3], 0.2, 0.0, seed=0)
    assert (len(split.train), len(split.dev), len(split.test)) == (2, 1, 0)


def test_questions_follow_their_documents() -> None:
    questions = [Question(f"q{i}", f"问题{i}", DOCS[i % 50]) for i in range(200)]
    parts = split_questions(questions, split_documents(DOCS, 0.2, 0.2, seed=0))
    assert sum(map(len, parts.values())) == 200
    assert {q.document for q in parts["train"]}.isdisjoint({q.document for q in parts["dev"]})


def test_leak_is_caught() -> None:
    with pytest.raises(LeakageError):
        assert_disjoint({"train": [Question("a", "x", "d.pdf")], "dev": [Question("b", "y", "d.pdf")]})
    with pytest.raises(ValueError):
        split_documents(DOCS, 0.5, 0.5, seed=0)
