"""The synthetic patent generator: layout, scans, determinism, answers that match the drawings, CLI."""
from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest

from patentqa.data.synth.__main__ import main
from patentqa.data.synth.patents import SynthSpec, generate

REPO = Path(__file__).resolve().parents[1]
SIDES = ("左侧", "右侧", "上方", "下方")
DPI = 100


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def labelled_rows(root: Path) -> list[dict]:
    """Train rows plus test rows joined with their gold answers, each with its split."""
    gold = {r["id"]: r for r in read_jsonl(root / "test" / "test_gold.jsonl")}
    rows = [dict(r, split="train") for r in read_jsonl(root / "train" / "train.jsonl")]
    return rows + [dict(r, **gold[r["id"]], split="test") for r in read_jsonl(root / "test" / "test.jsonl")]


def truth_of(root: Path, row: dict) -> dict:
    return json.loads((root / row["split"] / "truth" / (Path(row["document"]).stem + ".json")).read_text("utf-8"))


def asked(truth: dict, row: dict) -> dict:
    return next(q for q in truth["questions"] if q["id"] == row["id"])


def figure_with(truth: dict, page: int, numbers: list[int]) -> dict:
    return next(f for f in truth["figures"] if f["page"] == page
                and set(numbers) <= {d["number"] for d in f["parts"]})


def side_of(a: list[float], b: list[float]) -> str | None:
    """Independent rule: boxes apart along an axis and the centre direction within ~26.6 degrees of it."""
    angle = math.degrees(math.atan2((a[1] + a[3] - b[1] - b[3]) / 2, (a[0] + a[2] - b[0] - b[2]) / 2))
    apart = {"右侧": a[0] > b[2], "左侧": a[2] < b[0], "下方": a[1] > b[3], "上方": a[3] < b[1]}
    axis = {"右侧": 0.0, "下方": 90.0, "左侧": 180.0, "上方": -90.0}
    near = [s for s, deg in axis.items() if abs((angle - deg + 180) % 360 - 180) < 26.6 and apart[s]]
    return near[0] if len(near) == 1 else None


def test_layout_splits_and_evidence(synth_dir: Path) -> None:
    for path in ("synth.json", "train/train.jsonl", "test/test.jsonl", "test/test_gold.jsonl"):
        assert (synth_dir / path).is_file(), path
    docs = {s: {p.name for p in (synth_dir / s / "documents").glob("*.pdf")} for s in ("train", "test")}
    assert docs["train"] and docs["test"] and not docs["train"] & docs["test"]
    assert len(docs["train"]) + len(docs["test"]) == 12
    test_rows = read_jsonl(synth_dir / "test" / "test.jsonl")
    assert all(set(r) == {"id", "question", "document"} for r in test_rows)
    rows = labelled_rows(synth_dir)
    assert len({r["id"] for r in rows}) == len(rows)
    pages = {}
    for row in rows:
        assert row["document"] in docs[row["split"]]
        assert row["kind"] in ("figure_position", "figure_other", "document") and row["answer"]
        if row["document"] not in pages:
            pages[row["document"]] = pymupdf.open(synth_dir / row["split"] / "documents" / row["document"]).page_count
            assert 4 <= pages[row["document"]] <= 12
        assert row["evidence_pages"] and all(1 <= p <= pages[row["document"]] for p in row["evidence_pages"])
        assert truth_of(synth_dir, row)["n_pages"] == pages[row["document"]]
        named_page = re.search(r"第(\d+)页", row["question"])
        assert (named_page is None) == (row["kind"] == "document"), row
        if named_page:
            assert int(named_page.group(1)) in row["evidence_pages"]
    counts = json.loads((synth_dir / "synth.json").read_text())["counts"]
    assert sum(counts["questions"].values()) == len(rows)
    assert all(counts["kinds"][k] > 0 for k in ("figure_position", "figure_other", "document"))


def test_pdfs_are_image_only_a4_scans(synth_dir: Path) -> None:
    for pdf in sorted(synth_dir.glob("*/documents/*.pdf")):
        with pymupdf.open(pdf) as doc:
            for page in doc:
                assert page.get_text().strip() == "", f"{pdf.name} p{page.number + 1} has a text layer"
                assert len(page.get_images()) == 1
                assert (round(page.rect.width), round(page.rect.height)) == (595, 842)


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_spec_gives_same_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "a", SynthSpec(n_docs=3, seed=7, workers=1))
    generate(tmp_path / "b", SynthSpec(n_docs=3, seed=7, workers=2))
    generate(tmp_path / "c", SynthSpec(n_docs=3, seed=8, workers=1))
    a, b, c = (file_hashes(tmp_path / x) for x in "abc")
    assert len(a) == 3 * 2 + 4 and a == b
    assert a["train/train.jsonl"] != c["train/train.jsonl"]
    assert {k for k in a if k.endswith(".pdf")} != {k for k in c if k.endswith(".pdf")}


def test_position_answers_follow_the_drawn_geometry(synth_dir: Path) -> None:
    rows = [r for r in labelled_rows(synth_dir) if r["kind"] == "figure_position"]
    assert rows
    for row in rows:
        truth = truth_of(synth_dir, row)
        a, b = asked(truth, row)["parts"]
        (page,) = row["evidence_pages"]
        assert f"第{page}页" in row["question"] and str(a) in row["question"]
        boxes = {d["number"]: d["bbox"] for d in figure_with(truth, page, [a, b])["parts"]}
        side = side_of(boxes[a], boxes[b])
        assert side is not None, row
        named = [s for s in SIDES if s in row["answer"]]
        if named:  # "17位于18的右侧": the answer names the side
            assert named == [side], row
        else:  # "部件4位于哪个部件的上方？" -> the answer names part b
            assert side in row["question"] and re.search(rf"(?<!\d){b}(?!\d)|{part_name(truth, b)}", row["answer"])


def part_name(truth: dict, number: int) -> str:
    return next(p["name"] for p in truth["parts"] if p["number"] == number)


def dark_share(pix: pymupdf.Pixmap, points: list[tuple[float, float]]) -> float:
    """Share of points (in PDF points) with a dark pixel within one pixel of them."""
    scale, hits = DPI / 72, 0
    for x, y in points:
        px, py = round(x * scale), round(y * scale)
        window = [pix.pixel(min(max(px + dx, 0), pix.width - 1), min(max(py + dy, 0), pix.height - 1))[0]
                  for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
        hits += min(window) < 128
    return hits / len(points)


def outline(d: dict, n: int = 24) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = d["bbox"]
    if d["shape"] == "circle":
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        return [(cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n)) for i in range(n)]
    t = [0.1 + 0.8 * i / (n // 4 - 1) for i in range(n // 4)]
    return ([(x0 + f * (x1 - x0), y0) for f in t] + [(x0 + f * (x1 - x0), y1) for f in t]
            + [(x0, y0 + f * (y1 - y0)) for f in t] + [(x1, y0 + f * (y1 - y0)) for f in t])


def test_truth_geometry_is_what_the_scan_shows(synth_dir: Path) -> None:
    for path in sorted(synth_dir.glob("*/truth/*.json")):
        truth = json.loads(path.read_text("utf-8"))
        with pymupdf.open(path.parents[1] / "documents" / truth["document"]) as doc:
            for fig in truth["figures"]:
                pix = doc[fig["page"] - 1].get_pixmap(dpi=DPI, colorspace=pymupdf.csGRAY)
                for d in fig["parts"]:
                    where = f"{truth['document']} p{fig['page']} part {d['number']}"
                    assert dark_share(pix, outline(d)) >= 0.9, where
                    x0, y0, x1, y1 = d["bbox"]  # the label is outside the shape, and inked
                    assert not (x0 <= d["label"][0] <= x1 and y0 <= d["label"][1] <= y1), where
                    grid = [(d["label"][0] + dx, d["label"][1] + dy) for dx in (-3, 0, 3) for dy in (-3, 0, 3)]
                    assert dark_share(pix, grid) > 0, where
                assert dark_share(pix, [(30, y) for y in range(100, 800, 20)]) == 0  # margins stay blank


def test_figure_other_answers_come_from_the_description(synth_dir: Path) -> None:
    rows = [r for r in labelled_rows(synth_dir) if r["kind"] == "figure_other"]
    assert rows
    for row in rows:
        truth = truth_of(synth_dir, row)
        question = asked(truth, row)
        (number,) = question["parts"]
        pages = {p["page"]: p for p in truth["pages"]}
        by_role = {pages[p]["role"]: p for p in row["evidence_pages"]}
        assert len(row["evidence_pages"]) == 2 and set(by_role) == {"description", "figure"}, row
        fig_page, desc_page = by_role["figure"], by_role["description"]
        assert f"第{fig_page}页" in row["question"]
        figure_with(truth, fig_page, [number])
        assert number in pages[desc_page]["parts"], row
        if question["template"] == "part_name":
            assert row["answer"] == part_name(truth, number)
            assert row["answer"] in {p["name"] for p in truth["parts"]}
            assert re.search(rf"(?<!\d){number}[、-]{row['answer']}", pages[desc_page]["text"].replace("\n", ""))


def test_document_evidence_states_the_fact(synth_dir: Path) -> None:
    for row in (r for r in labelled_rows(synth_dir) if r["kind"] == "document"):
        truth = truth_of(synth_dir, row)
        pages = {p["page"]: p for p in truth["pages"]}
        assert all(pages[p]["role"] in ("abstract", "claims", "description") for p in row["evidence_pages"])
        if asked(truth, row)["template"] in ("doc_purpose", "doc_components"):
            assert 1 in row["evidence_pages"] and row["answer"] in pages[1]["text"].replace("\n", "")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "patentqa.data.synth", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_generates_and_rejects_bad_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    done = run_cli(f"out_dir={tmp_path / 'cli'}", "n_docs=3", "seed=1")
    assert done.returncode == 0, done.stderr
    assert "3 patents" in done.stdout
    assert len(list((tmp_path / "cli").glob("*/documents/*.pdf"))) == 3
    failed = run_cli(f"out_dir={tmp_path / 'bad'}", "n_doc=3")
    assert failed.returncode != 0 and "n_doc" in failed.stderr and "valid keys" in failed.stderr
    assert "Traceback" not in failed.stderr
    for args, word in (([f"out_dir={tmp_path / 'bad'}", "n_docs=abc"], "n_docs"), (["n_docs=2"], "out_dir"),
                       ([f"out_dir={tmp_path / 'bad'}", "test_ratio=2"], "test_ratio")):
        try:
            code = main(args)
        except SystemExit as exit_:  # argument parsing exits; spec validation returns
            code = exit_.code
        assert code == 2
        assert word in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_refuses_to_write_into_a_folder_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(tmp_path, SynthSpec(n_docs=1))
    assert (tmp_path / "notes.txt").read_text() == "keep me"
