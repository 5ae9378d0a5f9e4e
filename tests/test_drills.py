"""Failure drills: salted inputs through the whole data stage; a kill -9 in the middle of rendering."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import cache_root
from patentqa.config import compose
from patentqa.data.build import build_dataset
from salted import SALTED_ROWS, make_salted_dataset, scan_pdf


def test_salted_inputs_are_reported_and_the_build_goes_on(tmp_path: Path, tiny_vl, tiny_embedder) -> None:
    data = make_salted_dataset(tmp_path / "salted")
    docs = data / "train" / "documents"
    for index in range(4):  # enough clean documents for a train/dev split
        scan_pdf(docs / f"clean{index}.pdf", pages=3, seed=index)
    with open(data / "train" / "train.jsonl", "a", encoding="utf-8") as out:
        for index in range(4):
            out.write(json.dumps({"id": f"c{index}", "question": "在文件中第2页的图1中，编号为3的部件是什么？",
                                  "document": f"clean{index}.pdf", "answer": "滤网"}, ensure_ascii=False) + "\n")
    tiny = cache_root() / "tiny"
    cfg = compose(["+exp=smoke", "data=ccks2025", f"data.dir={data}", f"paths.root={tmp_path}",
                   f"paths.cache_dir={tmp_path}/cache", "retrieval=none", f"model.path={tiny}/qwen2_5_vl",
                   "data.split.test=0"])
    build = build_dataset(cfg)
    expected = sum(1 for _, reason in SALTED_ROWS if reason)
    assert build.manifest["problems"]["count"] == expected
    assert build.manifest["inputs"]["labelled"]["rows_skipped"] == expected
    assert sum(build.manifest["questions"].values()) == 2 + 4  # the valid salted rows + the clean ones
    reasons = " | ".join(p["reason"] for p in build.manifest["problems"]["items"])
    for word in ("invalid JSON", "encrypted", "truncated", "zero-byte", "not a PDF", "bare file name", "too long", "NUL"):
        assert word in reasons
    rendered = {doc for doc, _ in build.pages.paths}
    assert "secret.pdf" not in rendered and all((docs / doc).is_file() for doc in rendered), "nothing outside documents/"


@pytest.mark.e2e
def test_kill_9_during_rendering_then_rerun(tmp_path: Path, tiny_vl, tiny_embedder) -> None:
    tiny = cache_root() / "tiny"
    args = ["+exp=smoke", f"paths.root={tmp_path}", f"paths.cache_dir={tmp_path}/cache", "data.synth.n_docs=8",
            "data.synth.scan_dpi=300", "retrieval=none", f"model.path={tiny}/qwen2_5_vl"]
    command = [sys.executable, "-m", "patentqa.data", *args]
    subprocess.run([sys.executable, "-m", "patentqa.data.synth", f"out_dir={tmp_path}/data/synthetic-n8-s0",
                    "n_docs=8", "seed=0", "scan_dpi=300"], check=True, capture_output=True, timeout=300)
    pages_dir = tmp_path / "cache" / "pages"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if pages_dir.is_dir() and sum(1 for _ in pages_dir.rglob("p*.jpg")) >= 5:
            break
        time.sleep(0.01)
    assert process.poll() is None, "rendering finished before the kill"
    os.killpg(process.pid, signal.SIGKILL)  # the parent and every render worker
    process.wait()
    partial = sum(1 for _ in pages_dir.rglob("p*.jpg"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(next((tmp_path / "cache" / "datasets").glob("*/manifest.json")).read_text())
    assert manifest["pages"]["cached"] >= partial and manifest["problems"]["count"] == 0
    finals = list(pages_dir.rglob("p*.jpg"))
    assert len(finals) == manifest["pages"]["total"]
    for path in finals:
        with Image.open(path) as image:
            image.load()  # every cached page opens completely
    # a worker killed mid-write may leave its temp file; it is never a page (pages are only ever renamed into place)
    others = [p for p in pages_dir.rglob("*") if p.is_file() and p not in set(finals)]
    assert all(p.name.startswith(".p") and p.name.endswith(".tmp") for p in others), others
