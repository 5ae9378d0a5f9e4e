"""Corpus validation: every broken input is reported with file, line and reason."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from patentqa.data.corpus import DataError, read_split
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
