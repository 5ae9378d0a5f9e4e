"""The question browser (``patentqa.eval.browse``) and the W&B predictions table's page thumbnails.

The fixture is what a sweep leaves, without a model: three small PDFs in the CCKS layout (with gold evidence
pages), their pages rendered into a page cache by the data stage's own ``render_documents`` at the smoke
experiment's render spec, and two run dirs (the smoke config, a dataset manifest, ``eval/{dev,test}/
checkpoint-4/`` scored by the real ``score_file``) answering the same 12 questions: ``tuned`` is worse than
``baseline`` on some, better on others, the same on the rest, empty on one, and a Thinking model's reply on one.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pymupdf
import pytest
from omegaconf import OmegaConf
from PIL import Image

from patentqa.config import compose
from patentqa.data.build import render_spec
from patentqa.data.corpus import inspect_pdf
from patentqa.data.pages import render_documents
from patentqa.eval.aggregate import headline
from patentqa.eval.browse import build_browse, load_runs, main
from patentqa.eval.metrics import char_f1, char_rouge_l, composite, resolve_weights
from patentqa.eval.score import score_file
from patentqa.eval.thumbnails import ThumbSpec, derived_path, sent_size
from patentqa.tracking import read_jsonl, write_json_atomic

FAKE_KEY = "sk-browse-fake-5e6f7a8b9c0d"   # set as PATENTQA_TEST_API_KEY where a test plants it: must be masked
BEST = "checkpoint-4"
QUESTIONS = (  # (question, kind, form, pages shown, gold evidence pages)
    ("在文件中第3页的示意图中，部件2位于部件5的什么位置？", "figure_position", "figure_only", [3], [3]),
    ("根据文件中第4页的示意图，用于储存清洗液的是哪个部件？", "figure_other", "with_context", [4, 1, 2], [4, 2]),
    ("该专利要解决的技术问题是什么？", "document", "document", [1, 2], [1, 3]),
    ("基于文件中第2页的图1，编号为6的部件位于最近的哪个部件的下方？", "figure_position", "figure_only", [2], [2]),
)
GOLD = ["位于部件5的左侧", "储液箱(3)", "提高清洗效率", "安装板(21)"]
# (baseline, tuned) answer per question of each document: worse, better, the same, empty / Thinking
ANSWERS = [
    [("位于部件5的左侧", "位于下方"), ("储液箱", "储液箱(3)"), ("提高效率", "提高效率"), ("安装板", "")],
    [("位于左侧", "位于部件5的左侧"), ("储液箱(3)", "部件"), ("清洗", "清洗"), ("安装板(21)", "安装板(21)")],
    [("位于部件5的左侧", "位于部件5的左侧"), ("箱", "储液箱(3)"), ("提高清洗效率", "提高"), ("板", "安装")],
]
THINKING = (0, 0)  # (document, question) whose tuned answer is a Thinking model's reply


def make_pdf(path: Path, label: str, pages: int = 4) -> None:
    """An A4 'scan': a page label, a drawn figure and a few lines of text a page."""
    with pymupdf.open() as doc:
        for number in range(1, pages + 1):
            page = doc.new_page(width=595, height=842)
            page.insert_text((60, 80), f"{label} page {number}", fontsize=28)
            page.draw_rect(pymupdf.Rect(120, 200, 120 + 60 * number, 420), color=(0, 0, 0), width=3)
            page.draw_circle(pymupdf.Point(400, 300), 40 + 10 * number, color=(0, 0, 0), width=3)
            for line in range(8):
                page.insert_text((60, 500 + 30 * line), f"line {line} of page {number}", fontsize=14)
        doc.save(path)


def items() -> list[dict[str, Any]]:
    return [{"id": f"q{d}{j}", "document": f"CN00{d}U.pdf", "question": q, "kind": kind, "form": form, "pages": pages,
             "answer": GOLD[j], "round": "b"}
            for d in range(1, 4) for j, (q, kind, form, pages, _) in enumerate(QUESTIONS)]


def write_split(run_dir: Path, split: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """predictions.jsonl → scores.jsonl + metrics.json, as the sweep writes them; the headline."""
    out = run_dir / "eval" / split / BEST
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                           encoding="utf-8")
    record = score_file(out / "predictions.jsonl", ["char_f1", "char_rouge_l", "exact_match"], "default", "kind",
                        resamples=50, scores_path=out / "scores.jsonl", metrics_path=out / "metrics.json")
    record.update(split=split, checkpoint=BEST, step=4, headline=headline(record["aggregate"]))
    write_json_atomic(out / "metrics.json", record)
    return record["headline"]


def write_run(root: Path, name: str, cfg: Any, dataset: Path, side: int) -> Path:
    """One run dir in the sweep's layout answering every question with ``ANSWERS[..][side]``."""
    run_dir = root / "runs" / name
    run_dir.mkdir(parents=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    config["name"] = name
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    write_json_atomic(run_dir / "manifest.json", {"name": name, "dataset": {"dir": str(dataset)}})
    records = []
    for item in items():
        d, j = int(item["id"][1]), int(item["id"][2])
        prediction = ANSWERS[d - 1][j][side]
        record = {**item, "prediction": prediction, "raw_answer": prediction, "think": None}
        if side == 1 and (d - 1, j) == THINKING:
            record.update(raw_answer=f"<think>部件5在左边，部件2在下面</think>{prediction}", think="closed")
        records.append(record)
    scores = {split: write_split(run_dir, split, records) for split in ("dev", "test")}
    write_json_atomic(run_dir / "eval" / "sweep.json", {
        "run_dir": str(run_dir), "name": name, "select_by": "composite", "base": None,
        "checkpoints": [{"name": BEST, "step": 4, "dev": scores["dev"]}],
        "best": {"name": BEST, "step": 4, "dev": scores["dev"], "test": scores["test"]}})
    return run_dir


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("browse")
    documents = root / "data" / "train" / "documents"
    documents.mkdir(parents=True)
    rows = []
    for d in range(1, 4):
        make_pdf(documents / f"CN00{d}U.pdf", f"CN00{d}U")
        rows += [{"id": f"q{d}{j}", "document": f"CN00{d}U.pdf", "question": q, "answer": GOLD[j],
                  "evidence_pages": evidence} for j, (q, _, _, _, evidence) in enumerate(QUESTIONS)]
    (root / "data" / "train" / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                  for r in rows), encoding="utf-8")
    cfg = compose(["+exp=smoke", f"paths.root={root}", f"paths.cache_dir={root}/cache"])
    rendered = render_documents([inspect_pdf(p) for p in sorted(documents.glob("*.pdf"))], root / "cache" / "pages",
                                render_spec(cfg), workers=1, progress=False)
    assert not rendered.problems and rendered.rendered == 12
    dataset = root / "cache" / "datasets" / "synthetic-fixture"
    write_json_atomic(dataset / "manifest.json", {"data_dir": str(root / "data")})
    runs = {"baseline": write_run(root, "baseline", cfg, dataset, 0), "tuned": write_run(root, "tuned", cfg, dataset, 1)}
    loaded = load_runs([str(runs["baseline"]), str(runs["tuned"])])
    out = root / "site"
    browse = build_browse(loaded, loaded[0], out, "test", "Fixture browse", progress=False)
    return {"root": root, "cfg": cfg, "runs": runs, "pages": rendered.paths, "out": out, "browse": browse}


def page_data(index: Path) -> dict[str, Any]:
    """The questions the page embeds."""
    text = index.read_text(encoding="utf-8")
    start = text.index('<script id="browse-data" type="application/json">') + len(
        '<script id="browse-data" type="application/json">')
    return json.loads(text[start:text.index("</script>", start)])


def deltas_from_predictions(runs: dict[str, Path]) -> dict[str, float]:
    """tuned − baseline per-question composite, from the two predictions files (not from the page's numbers)."""
    weights = resolve_weights("default")

    def scores(run: Path) -> dict[str, float]:
        return {r["id"]: composite({"char_f1": char_f1(r["prediction"], r["answer"]),
                                    "char_rouge_l": char_rouge_l(r["prediction"], r["answer"])}, weights)
                for r in read_jsonl(run / "eval" / "test" / BEST / "predictions.jsonl")}
    base, tuned = scores(runs["baseline"]), scores(runs["tuned"])
    return {key: tuned[key] - base[key] for key in base}


def test_filters_sort_and_the_full_page_in_headless_chromium(layout: dict[str, Any], tmp_path: Path) -> None:
    """From file://: the page loads without a console error; "worse than the baseline" shows exactly the questions
    whose paired difference is negative (counted in the DOM against the predictions files), "better" the positive
    ones, "wrong in all runs" and the kind filter theirs; a thumbnail opens the page as the prompt sent it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from browser import check, chromium

    deltas = deltas_from_predictions(layout["runs"])
    worse, better = {k for k, d in deltas.items() if d < 0}, {k for k, d in deltas.items() if d > 0}
    assert len(worse) >= 3 and len(better) >= 3 and len(worse | better) < len(deltas)
    data = page_data(layout["out"] / "index.html")
    wrong = {q["id"] for q in data["questions"] if all(a["f1"] < 0.5 for a in q["answers"])}
    assert wrong and wrong != set(deltas)

    def shown(driver: Any) -> set[str]:
        return set(driver.execute_script(
            "return Array.from(document.querySelectorAll('article.q')).filter(a => !a.hidden && "
            "a.offsetParent !== null).map(a => a.dataset.id)"))

    with chromium(layout["out"] / "index.html") as driver:
        assert shown(driver) == set(deltas) and driver.find_element(By.ID, "count").text == "12 of 12 questions"
        delta = Select(driver.find_element(By.ID, "delta"))
        delta.select_by_value("worse")
        assert shown(driver) == worse, (shown(driver), worse)
        assert driver.find_element(By.ID, "count").text == f"{len(worse)} of 12 questions"
        Select(driver.find_element(By.ID, "sort")).select_by_value("delta-asc")
        order = driver.execute_script("return Array.from(document.querySelectorAll('article.q'))"
                                      ".filter(a => !a.hidden).map(a => a.dataset.id)")
        assert [deltas[k] for k in order] == sorted(deltas[k] for k in worse)
        delta.select_by_value("better")
        assert shown(driver) == better
        delta.select_by_value("")
        driver.find_element(By.ID, "wrong").click()
        assert shown(driver) == wrong
        driver.find_element(By.ID, "wrong").click()
        Select(driver.find_element(By.ID, "kind")).select_by_value("document")
        assert shown(driver) == {"q12", "q22", "q32"}
        Select(driver.find_element(By.ID, "kind")).select_by_value("")
        box = driver.find_element(By.ID, "search")

        def search(text: str) -> set[str]:
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.DELETE)
            if text:
                box.send_keys(text)
            return shown(driver)
        assert search("清洗液") == {"q11", "q21", "q31"}  # question text
        assert search("部件5在左边") == {"q10"}  # inside the Thinking model's folded raw reply
        assert search("") == set(deltas)
        delta.select_by_value("worse")
        page = check(driver)
        assert page.console_errors == [] and page.ink > 0.01, (page.console_errors, page.ink)  # blank: 0
        Image.fromarray(page.screenshot).save(tmp_path / "browse.png")  # the screenshot, kept with the test
        card = driver.find_element(By.CSS_SELECTOR, "article.q[data-id='q21']")  # worse, with-context: 3 pages
        thumbs = card.find_elements(By.CSS_SELECTOR, ".page img.thumb")
        assert len(thumbs) == 3 and all(driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", t) for t in thumbs)
        thumbs[0].click()
        full = driver.execute_script("var i = document.querySelector('#viewer:not([hidden]) img.full');"
                                     "return i && [i.complete, i.naturalWidth, i.naturalHeight, i.width, i.height,"
                                     " i.getAttribute('src')]")
        Image.fromarray(check(driver).screenshot).save(tmp_path / "browse-page.png")
    assert full is not None, "a thumbnail opened no page"
    complete, natural_w, natural_h, width, height, src = full
    cached = layout["pages"][("CN002U.pdf", 4)]
    assert complete and os.path.samefile(layout["out"] / src, cached)  # the cached page itself, hard-linked
    assert (natural_w, natural_h) == Image.open(cached).size
    assert (width, height) == sent_size((natural_w, natural_h), 50176, 3136, 28)  # with_context: 64 tokens
    assert (tmp_path / "browse.png").stat().st_size > 10_000


def test_pages_evidence_answers_and_differences_in_the_page(layout: dict[str, Any]) -> None:
    data = page_data(layout["out"] / "index.html")
    assert [r["label"] for r in data["runs"]] == [f"baseline ({BEST})", f"tuned ({BEST})"] and data["problems"] == []
    questions = {q["id"]: q for q in data["questions"]}
    deltas = deltas_from_predictions(layout["runs"])
    for key, question in questions.items():
        assert question["answers"][0]["delta"] is None
        assert question["answers"][1]["delta"] == pytest.approx(deltas[key], abs=1e-12)
    with_context = questions["q11"]
    assert [(p["page"], p["asked"]) for p in with_context["pages"]] == [(4, True), (1, False), (2, False)]
    assert with_context["evidence"] == [4, 2] and questions["q12"]["evidence"] == [1, 3]
    assert [p["page"] for p in questions["q12"]["pages"]] == [1, 2] and not questions["q12"]["pages"][0]["asked"]
    (view,) = questions["q10"]["pages"][0]["views"]
    assert view["runs"] == [0, 1] and view["budget"] == [100352, 3136] and view["size"] == view["file"]
    assert questions["q10"]["answers"][1]["raw"].startswith("<think>")
    assert questions["q13"]["answers"][1]["text"] == "" and "raw" not in questions["q13"]["answers"][0]
    assert questions["q10"]["answers"][0]["f1"] == char_f1("位于部件5的左侧", GOLD[0])


def test_thumbnails_are_small_cached_once_and_shared(layout: dict[str, Any], tmp_path: Path) -> None:
    """12 pages shown (4 of each document): one thumbnail each, made once into the cache beside the page cache; a second browse (another
    folder) makes none; the site holds hard links (no new bytes on this filesystem)."""
    browse = layout["browse"]
    assert (browse.thumbnails_made, browse.thumbnails_cached) == (12, 0)  # pages 1-4 of each document
    thumbs = sorted((layout["out"] / "thumbs").iterdir())
    assert len(thumbs) == 12
    for thumb in thumbs:
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and image.height <= ThumbSpec().height
        assert thumb.stat().st_size < 30_000
    cached = derived_path(layout["root"] / "cache", layout["pages"][("CN001U.pdf", 3)], ThumbSpec().key())
    assert cached.is_file() and any(os.path.samefile(cached, t) for t in thumbs)
    before = cached.stat().st_mtime_ns
    again = build_browse(load_runs([str(p) for p in layout["runs"].values()])[:2],
                         load_runs([str(layout["runs"]["baseline"])])[0], tmp_path / "again", progress=False)
    assert (again.thumbnails_made, again.thumbnails_cached) == (0, 12) and cached.stat().st_mtime_ns == before


def test_sent_size_is_what_the_engine_gets(layout: dict[str, Any]) -> None:
    """The size a click shows is the size ``load_images`` (the engines' one resize) gives the cached file."""
    from patentqa.data.prompts import ImagePart, Prompt, load_images

    page = layout["pages"][("CN002U.pdf", 1)]
    size = Image.open(page).size
    for budget, factor, slicing in ((50176, 28, False), (100352, 28, False), (40000, 32, False), (30000, 28, True)):
        prompt = Prompt((ImagePart(str(page), 1, budget, 3136),), "with_context")
        (image,) = load_images(prompt, factor, resize=not slicing)
        assert sent_size(size, budget, 3136, factor, slicing) == image.size, (budget, factor, slicing)


def test_bad_input_is_one_line_each_and_the_rest_is_shown(layout: dict[str, Any], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A missing run dir, a run without test predictions and a page missing from the cache: one line each naming
    what and where; the page is still written with everything else."""
    runs = layout["runs"]
    partial = tmp_path / "partial"
    shutil.copytree(runs["tuned"], partial)
    (partial / "eval" / "test" / BEST / "predictions.jsonl").unlink()
    missing = layout["pages"][("CN003U.pdf", 3)]
    hidden = missing.with_name(missing.name + ".away")
    missing.rename(hidden)
    try:
        code = main([f"runs=[{runs['baseline']},{tmp_path / 'nowhere'},{partial},{runs['tuned']}]",
                     f"out={tmp_path / 'site'}"])
    finally:
        hidden.rename(missing)
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"error: runs={tmp_path / 'nowhere'}: " in err and "no such run dir" in err
    assert f"{partial / 'eval' / 'test' / BEST / 'predictions.jsonl'} missing): left out" in err
    assert f"CN003U.pdf page 3: page image {missing}: missing from the page cache: shown without it" in err
    data = page_data(tmp_path / "site" / "index.html")
    assert len(data["questions"]) == 12 and len(data["runs"]) == 2 and len(data["problems"]) == 2
    (page,) = next(q for q in data["questions"] if q["id"] == "q30")["pages"]
    assert "thumb" not in page and "src" not in page["views"][0]


def test_no_run_to_browse_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([f"runs=[{tmp_path / 'nowhere'}]", f"out={tmp_path / 'site'}"]) == 1
    assert "no evaluated run" in capsys.readouterr().err and not (tmp_path / "site").exists()


def test_secrets_in_answers_are_masked(layout: dict[str, Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that reached a reply (a secret environment variable's value) is masked in the page like in every
    file patentqa writes (``tracking.scrub``)."""
    monkeypatch.setenv("PATENTQA_TEST_API_KEY", FAKE_KEY)
    leaky = tmp_path / "leaky"
    shutil.copytree(layout["runs"]["tuned"], leaky)
    predictions = leaky / "eval" / "test" / BEST / "predictions.jsonl"
    records = read_jsonl(predictions)
    records[0]["raw_answer"] = f"my key is {FAKE_KEY}"
    predictions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    runs = load_runs([str(layout["runs"]["baseline"]), str(leaky)])
    build_browse(runs, runs[0], tmp_path / "site", progress=False)
    page = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert FAKE_KEY not in page and "my key is ***" in page


def test_the_sweep_table_holds_the_asked_page_and_the_retrieved_pages(layout: dict[str, Any], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's W&B predictions table with the real wandb client, offline: the asked page as a ``wandb.Image``
    (the thumbnail's bytes, staged inside the run's own offline dir) and the retrieved page numbers; rows scrubbed."""
    from test_tracking import of, segments

    from patentqa.eval.sweep import TABLE_COLUMNS, _log
    from patentqa.tracking import Tracker

    for name in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        (tmp_path / "home" / var).mkdir(parents=True)
        monkeypatch.setenv(var, str(tmp_path / "home" / var))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("PATENTQA_TEST_API_KEY", FAKE_KEY)
    folder = tmp_path / "eval"
    shutil.copytree(layout["runs"]["tuned"] / "eval" / "test" / BEST, folder)
    records = read_jsonl(folder / "predictions.jsonl")
    records[1]["question"] += f" key={FAKE_KEY}"
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                              encoding="utf-8")
    record = {**json.loads((folder / "metrics.json").read_text()), "predictions": str(folder / "predictions.jsonl"),
              "scores_file": str(folder / "scores.jsonl"), "cached": False}
    run_dir = tmp_path / "run"
    tracker = Tracker({"name": "wandb", "project": "patentqa-test", "mode": "offline"}, run_dir=run_dir, name="t")
    with tracker:
        _log(tracker, record, layout["pages"], layout["root"] / "cache")
    os.environ.pop("WANDB_SERVICE", None)
    (segment,) = run_dir.glob("wandb/offline-run-*")
    (table_file,) = segment.glob("files/media/table/test_predictions/*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == TABLE_COLUMNS
    rows = {row[0]: dict(zip(TABLE_COLUMNS, row)) for row in table["data"]}
    assert rows["q11"]["retrieved pages"] == "1, 2" and rows["q12"]["retrieved pages"] == "1, 2"
    assert rows["q10"]["retrieved pages"] == "" and rows["q11"]["question"].endswith("key=***")
    (records,) = segments(run_dir, tracker.run_id)  # waits for the writer's last record
    (artifact,) = [a for a in of(records, "artifact") if a.type == "run_table"]
    images = {e.path: Path(e.local_path) for e in artifact.manifest.contents if e.path.startswith("media/images/")}
    thumbs = {derived_path(layout["root"] / "cache", layout["pages"][(f"CN00{d}U.pdf", page)], ThumbSpec().key())
              for d in range(1, 4) for page in (2, 3, 4)}  # the asked pages; the document questions ask none
    assert len(images) == len(thumbs) == 9
    for local in images.values():
        assert local.is_relative_to(segment) and local.is_file()  # the offline run holds its media
    assert {local.read_bytes() for local in images.values()} == {t.read_bytes() for t in thumbs}
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert not leaked, leaked
