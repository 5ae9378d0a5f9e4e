"""Corpus validation: every broken input is reported with file, line and reason."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from patentqa.data.corpus import DataError, question_id, read_split, submission_ids
from salted import SALTED_ROWS, make_salted_dataset, scan_pdf


@pytest.fixture()
def salted(tmp_path: Path) -> Path:
    return make_salted_dataset(tmp_path / "salted")


def test_every_problem_is_reported_with_its_line(salted: Path) -> None:
    data = read_split(salted, "train")
    by_line = {p.line: p.reason for p in data.problems}
    for line, (_, expected) in enumerate(SALTED_ROWS, start=1):
        if expected is None:
            assert line not in by_line, f"line {line} should be valid: {by_line.get(line)}"
        else:
            assert expected in by_line.get(line, ""), f"line {line}: expected {expected!r}, got {by_line.get(line)!r}"
    assert all(p.file.endswith("train.jsonl") for p in data.problems)
    assert [q.id for q in data.questions] == ["q1", "q18"]
    assert data.rows_read == len(SALTED_ROWS)
    assert data.summary()["rows_skipped"] == len(SALTED_ROWS) - 2  # nothing dropped silently
    assert set(data.documents) == {"good.pdf"}


def test_strict_mode_stops_and_lists_everything(salted: Path) -> None:
    with pytest.raises(DataError) as caught:
        read_split(salted, "train", strict=True)
    assert str(caught.value).count("train.jsonl:") == sum(1 for _, e in SALTED_ROWS if e)


def test_clean_split_has_no_problems(tmp_path: Path) -> None:
    docs = tmp_path / "test" / "documents"
    docs.mkdir(parents=True)
    scan_pdf(docs / "a.pdf", pages=4)
    (tmp_path / "test" / "test.jsonl").write_text(
        '{"id": 1, "question": "在文件中第4页的图中，部件2是什么？", "document": "a.pdf"}\n\n', encoding="utf-8")
    data = read_split(tmp_path, "test")
    assert data.problems == [] and data.questions[0].id == "1" and data.questions[0].answer is None
    assert data.documents["a.pdf"].page_count == 4


def test_check_cli_lists_problems_and_exits_1(salted: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "patentqa.data.check", f"dir={salted}", "split=train"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == sum(1 for _, e in SALTED_ROWS if e) + 1
    assert lines[-1].startswith("PROBLEMS:") and '"questions": 2' in lines[-1]
    assert "train.jsonl:3: invalid JSON" in run.stdout


def test_check_cli_clean_exits_0(synth_dir: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "patentqa.data.check", f"dir={synth_dir}", "split=train"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("OK:")


def real_round_b_layout(root: Path, reference: Path) -> Path:
    """The 600 real round-B questions as a CCKS train split; each of their 177 patents a blank scan
    long enough for the page it is asked about (the real PDFs are not vendored)."""
    lines = (reference / "seed_round_b_questions.jsonl").read_text(encoding="utf-8").splitlines()
    docs = root / "train" / "documents"
    docs.mkdir(parents=True)
    scan_pdf(root / "blank.pdf", pages=40)  # the highest page asked is 37
    for name in {json.loads(line)["document"] for line in lines}:
        (docs / name).symlink_to(root / "blank.pdf")
    (root / "train" / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_real_rows_keep_question_idx_as_their_id_into_the_submission(tmp_path: Path, reference: Path) -> None:
    from patentqa.infer.pipeline import write_submission

    data = read_split(real_round_b_layout(tmp_path / "ccks", reference), "train")
    assert data.problems == [] and len(data.questions) == 600 and len(data.documents) == 177
    rows = [json.loads(line) for line in (reference / "seed_round_b_questions.jsonl").read_text().splitlines()]
    assert [q.id for q in data.questions] == [str(row["question_idx"]) for row in rows]
    records = [{"id": q.id, "prediction": f"答{q.id}"} for q in data.questions]
    write_submission(tmp_path / "submission.jsonl", data.questions, records)
    lines = [json.loads(line) for line in (tmp_path / "submission.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines == [{"id": str(row["question_idx"]), "question_idx": row["question_idx"],
                      "answer": f"答{row['question_idx']}"} for row in rows]


def test_id_fields_rules(tmp_path: Path) -> None:
    """``id`` wins over ``question_idx`` (both kept); a bad or repeated question_idx is reported; no id → hash."""
    docs = tmp_path / "test" / "documents"
    docs.mkdir(parents=True)
    scan_pdf(docs / "a.pdf", pages=2)
    rows = [{"id": "h1", "question_idx": 7, "question": "根据专利文本，用途是什么？", "document": "a.pdf"},
            {"question_idx": True, "question": "根据专利文本，功能是什么？", "document": "a.pdf"},
            {"question_idx": 3, "question": "根据专利文本，结构是什么？", "document": "a.pdf"},
            {"question_idx": 3, "question": "根据专利文本，材料是什么？", "document": "a.pdf"},
            {"question": "根据专利文本，优点是什么？", "document": "a.pdf"}]
    (tmp_path / "test" / "test.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                                                  encoding="utf-8")
    data = read_split(tmp_path, "test")
    assert [q.id for q in data.questions] == ["h1", "3", question_id("a.pdf", "根据专利文本，优点是什么？")]
    assert submission_ids(data.questions[0]) == {"id": "h1", "question_idx": 7}
    assert submission_ids(data.questions[2]) == {"id": data.questions[2].id}
    assert [(p.line, p.reason) for p in data.problems] == [
        (2, "field 'question_idx' must be a string or integer, got bool"), (4, "duplicate id '3' (first on line 3)")]
