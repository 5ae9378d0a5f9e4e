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


def test_k_folds_cover_the_non_test_documents_once_and_keep_test_out() -> None:
    from patentqa.data.split import fold_of

    splits = [split_documents(DOCS, 0.2, 0.1, seed=3, folds=5, fold=k) for k in range(5)]
    test = set(splits[0].test)
    assert len(test) == 5 and all(set(s.test) == test for s in splits)  # the same held-out test in every fold
    devs = [set(s.dev) for s in splits]
    assert sorted(d for dev in devs for d in dev) == sorted(set(DOCS) - test)  # each non-test document once
    assert all(len(dev) == 9 for dev in devs)
    for s in splits:
        assert not set(s.train) & set(s.dev) and not (set(s.train) | set(s.dev)) & test
    assert splits == [split_documents(list(reversed(DOCS)), 0.3, 0.1, seed=3, folds=5, fold=k) for k in range(5)]
    assert split_documents(DOCS, 0.2, 0.1, seed=4, folds=5, fold=0).dev != splits[0].dev  # fixed by (seed, K)
    assert {d: k for k, dev in enumerate(devs) for d in dev} == fold_of(DOCS, 0.1, 3, 5)
    with pytest.raises(ValueError, match="fold=5"):
        split_documents(DOCS, 0.2, 0.1, seed=3, folds=5, fold=5)
    with pytest.raises(ValueError, match="folds=1"):
        split_documents(DOCS, 0.2, 0.1, seed=3, folds=1)
