"""The data stage end to end on synthetic patents: rows, splits, manifest, caching."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cache_root
from patentqa.config import compose
from patentqa.data.build import build_dataset
from patentqa.data.prompts import IMAGE_TAG, prompt_from_json


def smoke_cfg(tmp: Path, *overrides: str, n_docs: int | None = 10):
    tiny = cache_root() / "tiny"
    synth = [f"data.synth.n_docs={n_docs}"] if n_docs else []
    return compose(["+exp=smoke", f"paths.root={tmp}", f"paths.cache_dir={tmp}/cache", *synth,
                    f"model.path={tiny}/qwen2_5_vl", f"model.embedder_path={tiny}/qwen2_vl_gme", *overrides])


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_vl, tiny_embedder):
    tmp = tmp_path_factory.mktemp("build")
    return tmp, build_dataset(smoke_cfg(tmp))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_rows_are_well_formed(built) -> None:
    _, build = built
    for name in ("train.jsonl", "dev.jsonl"):
        rows = read_jsonl(build.out_dir / name)
        assert rows
        for row in rows:
            assert row["messages"][0]["content"].count(IMAGE_TAG) == len(row["images"]) >= 1
            assert all(Path(p).is_absolute() and Path(p).is_file() for p in row["images"])
            assert row["messages"][1]["content"], "every training row has its gold answer"
            assert row["chat_template_kwargs"]["max_pixels"] in (50176, 100352)
    for name in ("dev_eval.jsonl", "test_eval.jsonl"):
        for record in read_jsonl(build.out_dir / name):
            prompt = prompt_from_json(record["prompt"])
            assert [i.page for i in prompt.images] == record["pages"] and record["answer"]


def test_splits_are_disjoint_and_manifest_complete(built) -> None:
    _, build = built
    manifest = json.loads((build.out_dir / "manifest.json").read_text(encoding="utf-8"))
    docs = {name: set(manifest["documents"][name]) for name in ("train", "dev", "test")}
    assert docs["train"] and docs["dev"] and not (docs["train"] & docs["dev"] or docs["train"] & docs["test"])
    rows = {name: read_jsonl(build.out_dir / f"{name}.jsonl") for name in ("train", "dev")}
    assert {r["document"] for r in rows["train"]} <= docs["train"] and {r["document"] for r in rows["dev"]} <= docs["dev"]
    assert manifest["leakage"]["documents_disjoint"] and manifest["leakage"]["no_heldout_question_in_train"]
    assert manifest["leakage"]["style_examples_from_train_only"]
    for key in ("config", "inputs", "kinds", "forms", "outputs", "pages", "problems", "retrieval"):
        assert key in manifest, key
    assert manifest["outputs"]["train.jsonl"]["rows"] == len(rows["train"])
    assert set(manifest["kinds"]["train"]) == {"document", "figure_other", "figure_position"}
    # the seed's switch: figure-only questions also trained with asked + retrieved pages
    forms = [r["form"] for r in rows["train"]]
    assert forms.count("with_context") > manifest["forms"]["train"]["with_context"]


def test_second_build_reuses_everything_and_a_prompt_change_reuses_pages(built) -> None:
    tmp, first = built
    mtimes = {p: p.stat().st_mtime_ns for p in first.out_dir.glob("*.jsonl")}
    again = build_dataset(smoke_cfg(tmp))
    assert again.out_dir == first.out_dir and again.pages.rendered == 0
    assert {p: p.stat().st_mtime_ns for p in again.out_dir.glob("*.jsonl")} == mtimes, "identical rows not rewritten"
    assert again.manifest["seconds"] < first.manifest["seconds"]
    labelled = build_dataset(smoke_cfg(tmp, "prompt=page_labels"))
    assert labelled.out_dir != first.out_dir and labelled.pages.rendered == 0
    text = read_jsonl(labelled.out_dir / "train.jsonl")[0]["messages"][0]["content"]
    assert "页：<image>" in text


def test_strict_mode_stops_on_bad_input(tmp_path: Path, tiny_vl, tiny_embedder) -> None:
    from patentqa.data.corpus import DataError
    from salted import make_salted_dataset

    make_salted_dataset(tmp_path / "salted")
    cfg = smoke_cfg(tmp_path, "data=ccks2025", f"data.dir={tmp_path}/salted", "strict=true", n_docs=None)
    with pytest.raises(DataError):
        build_dataset(cfg)


def test_a_synthetic_dir_made_with_another_spec_is_refused(built) -> None:
    """The set's folder name does not carry every generator setting: a changed one must not
    silently reuse the old set."""
    from patentqa.data.build import ensure_corpus

    tmp, _ = built
    assert ensure_corpus(smoke_cfg(tmp)).is_dir()  # same spec: reused
    with pytest.raises(ValueError, match=r"position_share=0\.8.*position_share=0\.5.*data\.dir"):
        ensure_corpus(smoke_cfg(tmp, "data.synth.position_share=0.5"))
