"""Merge + equivalence check on the tiny Qwen2.5-VL: real `swift sft` -> real `swift export` -> check.

A LoRA adapter is trained for a few steps with a learning rate high enough to change the model
(non-zero B matrices, different first tokens); ``merge_checkpoint`` merges it and finds base +
adapter and the merged model equivalent. Then merged weights are corrupted in copies (noise on
one tensor; one tensor left unmerged, as when a merge misses a module) and the check fails with
exit 1 and a message naming what differs: proof that the check can fail. ~60 s on 2 CPU cores.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from patentqa import residency
from patentqa.data.prompts import prompt_to_json
from patentqa.train import equivalence as check, merge
from patentqa.train.equivalence import synthetic_prompts
from patentqa.train.merge import MergeError, MergeReport, merge_checkpoint
from conftest import ADAPTER_STEPS
from swift_tiny_run import run_logged

MAX_STEPS = ADAPTER_STEPS  # the session's adapters fixture: checkpoints 2 and 4 of one swift sft run
CORRUPTED_TENSOR = "model.layers.1.mlp.down_proj.weight"  # LoRA-merged (all-linear), as swift saves it


@pytest.fixture(scope="module")
def checkpoint(adapters: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's real `swift sft` LoRA checkpoint (lr 2e-2: the adapter matters), in a copy of its run
    dir (swift export reads the run's args.json and writes the merged model beside the checkpoint)."""
    run_dir = tmp_path_factory.mktemp("merge_sft") / adapters[1].parent.name
    shutil.copytree(adapters[1].parent, run_dir)
    ckpt = run_dir / f"checkpoint-{MAX_STEPS}"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "adapter_config.json").is_file()
    return ckpt


@pytest.fixture(scope="module")
def merged(checkpoint: Path) -> MergeReport:
    """The first merge of ``checkpoint`` (real `swift export`) and its equivalence report; its model loads recorded in
    ``residency.jsonl`` beside the run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(residency.LOG_ENV, str(checkpoint.parent / "residency.jsonl"))
        return merge_checkpoint(checkpoint, k=8, max_new_tokens=8, min_new_tokens=4)


@pytest.mark.e2e
def test_the_merge_holds_one_model_at_a_time(checkpoint: Path, merged: MergeReport) -> None:
    """swift export (base + adapter in its process), then the check's base + adapter, then the merged model: each
    recorded and released before the next (on a node the 32B merge and its check never hold two models)."""
    events = residency.read_log(checkpoint.parent / "residency.jsonl")
    assert [(e["event"], e["kind"], e["name"]) for e in events] == [
        (event, kind, str(name)) for kind, name in [("swift export", checkpoint), ("transformers", checkpoint),
                                                    ("transformers", Path(merged.merged_dir))]
        for event in ("load", "release")], events
    assert all(e["alive"] == [f"{e['kind']}:{e['name']}"] for e in events if e["event"] == "load"), events


@pytest.mark.e2e
def test_adapter_changes_the_model(checkpoint: Path, merged: MergeReport) -> None:
    from safetensors.torch import load_file

    adapter = load_file(checkpoint / "adapter_model.safetensors")
    lora_b = {key: float(t.abs().max()) for key, t in adapter.items() if "lora_B" in key}
    assert lora_b and all(value > 0 for value in lora_b.values()), lora_b
    eq = merged.equivalence
    assert eq.adapter_effect > 0.1, eq.adapter_effect  # first-step logits move, far beyond the tolerance
    assert eq.adapter_effect > 100 * eq.tolerance
    assert eq.adapter_changes_first_token > 0
    assert not eq.warnings, eq.warnings


@pytest.mark.e2e
def test_merge_is_equivalent(checkpoint: Path, merged: MergeReport, tiny_vl: Path) -> None:
    merged_dir = checkpoint.with_name(f"{checkpoint.name}-merged")
    assert merged.equivalent and merged.verdict == "equivalent", merged.problems
    assert Path(merged.merged_dir) == merged_dir and Path(merged.base_model) == tiny_vl
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "chat_template.jinja", "export.log", merge.REPORT_NAME):
        assert (merged_dir / name).is_file(), name
    argv = merged.swift_argv
    assert argv[1:] == ["export", "--adapters", str(checkpoint), "--merge_lora", "true", "--output_dir", argv[7],
                        "--exist_ok", "true"]
    assert Path(argv[7]).parent == checkpoint.parent and Path(argv[7]).name.startswith(".checkpoint-4-merged.partial")
    assert not list(checkpoint.parent.glob(".*merged*")), "partial or old merge left behind"

    eq = merged.equivalence
    assert eq.dtype == "float32" and eq.k == 8 and not eq.input_diffs
    assert all(p.equal and p.first_diff is None and len(p.adapter_tokens) >= 4 for p in eq.prompts)
    # fp32: only the order of additions differs (~1e-5 on this adapter; a wrong merge is off by > 1e-2)
    assert eq.max_logit_diff <= 5e-5, eq.max_logit_diff
    assert eq.max_logit_diff_prefix <= 5e-5, eq.max_logit_diff_prefix

    report = json.loads((merged_dir / merge.REPORT_NAME).read_text(encoding="utf-8"))
    assert report["verdict"] == "equivalent" and report["checkpoint"] == str(checkpoint)
    assert len(report["equivalence"]["prompts"]) == 8
    assert math.isfinite(report["equivalence"]["max_logit_diff"])
    assert {"export_s", "check_s", "total_s"} <= set(report["timings"])


@pytest.mark.e2e
def test_swift_merge_equals_peft_merge_and_unload(checkpoint: Path, merged: MergeReport) -> None:
    """swift export (peft tuner backend) merges exactly as peft's ``merge_and_unload``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(merged.base_model, dtype=torch.float32)
    ours = PeftModel.from_pretrained(base, str(checkpoint)).merge_and_unload().state_dict()
    theirs = AutoModelForImageTextToText.from_pretrained(merged.merged_dir, dtype=torch.float32).state_dict()
    assert set(ours) == set(theirs)
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) <= 1e-6


def _corrupt(merged_dir: Path, out: Path, base_model: str, how: str) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(merged_dir, out)
    weights = load_file(out / "model.safetensors")
    tensor = weights[CORRUPTED_TENSOR]
    if how == "noise":  # 10% of the tensor's spread on one of ~60 tensors
        noise = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(0))
        weights[CORRUPTED_TENSOR] = tensor + 0.1 * tensor.std() * noise
    else:  # the merge missed a module: its base weight is still there
        weights[CORRUPTED_TENSOR] = load_file(Path(base_model) / "model.safetensors")[CORRUPTED_TENSOR]
    assert not weights[CORRUPTED_TENSOR].equal(tensor)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["noise", "missed_module"])
def test_corrupted_merge_fails(checkpoint: Path, merged: MergeReport, tmp_path: Path, how: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = _corrupt(Path(merged.merged_dir), tmp_path / f"bad-{how}", merged.base_model, how)
    with pytest.raises(SystemExit) as exit_info:
        merge.main([f"checkpoint={checkpoint}", f"merged={bad}", "k=4", "max_new_tokens=4", "min_new_tokens=4"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "MERGE CHECK FAILED" in err and "NOT equivalent" in err, err
    assert "first-step logits differ by up to" in err and "> tolerance" in err, err
    report = json.loads((bad / merge.REPORT_NAME).read_text(encoding="utf-8"))
    assert report["verdict"] == "NOT EQUIVALENT" and report["problems"]
    assert report["equivalence"]["max_logit_diff"] > report["equivalence"]["tolerance"]


@pytest.mark.e2e
def test_incomplete_merged_dir_is_named(checkpoint: Path, merged: MergeReport, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        os.symlink(Path(merged.merged_dir) / name, partial / name)
    with pytest.raises(MergeError, match="lacks: image processor .*; chat template"):
        merge_checkpoint(checkpoint, merged=partial)


@pytest.mark.e2e
def test_cli_merges_again(checkpoint: Path, merged: MergeReport, tmp_path: Path) -> None:
    """The CLI as a subprocess: a second merge into the existing dir, prompts from an eval JSONL."""
    prompts = synthetic_prompts(3, tmp_path)
    records = [{"id": "q0", "question": "no prompt here"}] + [
        {"id": f"q{i}", "answer": "左侧", "prompt": prompt_to_json(p)} for i, p in enumerate(prompts)]
    dev = tmp_path / "dev_eval.jsonl"
    dev.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    report_path = Path(merged.merged_dir) / merge.REPORT_NAME
    before = report_path.stat().st_mtime_ns

    argv = [sys.executable, "-m", "patentqa.train.merge", f"checkpoint={checkpoint}", f"prompts={dev}", "k=2",
            "max_new_tokens=4", "min_new_tokens=2"]
    proc = run_logged(argv, tmp_path, tmp_path / "cli.log")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "[merge] equivalent: 2 prompts" in proc.stdout, proc.stdout[-2000:]
    assert "Successfully merged LoRA" in proc.stdout  # swift's own output, streamed through
    report: dict[str, Any] = json.loads(report_path.read_text(encoding="utf-8"))
    assert report_path.stat().st_mtime_ns > before
    assert report["verdict"] == "equivalent" and report["equivalence"]["k"] == 2
    assert report["prompts_source"] == str(dev)
    assert not list(checkpoint.parent.glob(".*merged*")), "partial or old merge left behind"


def test_token_mismatch_is_named() -> None:
    """A token difference names the prompt and its first differing position (no model needed)."""
    import torch

    logits = [torch.zeros(2, 5) for _ in range(3)]
    adapter = check._Run(tokens=[[1, 2, 3], [1, 2, 4]], step_logits=logits)
    merged_run = check._Run(tokens=[[1, 2, 3], [1, 2, 0, 4]], step_logits=[t.clone() for t in logits] + [logits[0]])
    base = check._Run(tokens=[[4], [4]], step_logits=[logits[0] + 1])
    results, prefix = check._compare(adapter, merged_run, base, decode=lambda ids: str(ids))
    assert [r.equal for r in results] == [True, False] and results[1].first_diff == 2 and prefix == 0.0
    equivalence = check.Equivalence(
        base_model="b", adapter_dir="a", merged_dir="m", k=2, max_new_tokens=4, min_new_tokens=0, dtype="float32",
        atol=1e-3, rtol=0.0, logit_scale=0.0, tolerance=1e-3, max_logit_diff=0.0, max_logit_diff_prefix=prefix,
        adapter_effect=1.0, adapter_changes_first_token=2, input_diffs=[], prompts=results, timings={})
    (problem,) = equivalence.problems()
    assert problem.startswith("prompt 1: generated tokens differ from position 2"), problem


@pytest.mark.e2e
def test_swift_trained_on_page_images_and_the_merged_model_reads_them(adapters: tuple[Path, Path], checkpoint: Path,
                                                                       merged: MergeReport, tmp_path: Path) -> None:
    """On the session's swift run: the rows carry one <image> tag per page, swift's template expanded them into
    Qwen's real <|image_pad|> id, losses are finite and the logged last checkpoint is the one saved; the merged
    model generates from an image prompt, and the page changes the next token's logits (the image reaches it)."""
    import torch
    from PIL import Image, ImageDraw
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    work = adapters[1].parent.parent.parent  # tiny_lora_sft's work dir: rows, sft.log, swift_out/v*/
    rows = [json.loads(line) for line in (work / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows and all(r["messages"][0]["content"].count("<image>") == len(r["images"]) > 0 for r in rows)
    assert "151655" in (work / "sft.log").read_text(encoding="utf-8")
    logged = [json.loads(line) for line in (adapters[1].parent / "logging.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logged if "loss" in r]
    assert losses and all(math.isfinite(x) for x in losses)
    assert Path(logged[-1]["last_model_checkpoint"]) == adapters[1]

    merged_dir = checkpoint.with_name(f"{checkpoint.name}-merged")
    processor = AutoProcessor.from_pretrained(merged_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(merged_dir).eval()
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "在文件中第1页的示意图中，编号为1的部件位于哪里？"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    page = Image.new("RGB", (280, 280), "white")
    ImageDraw.Draw(page).rectangle([20, 30, 120, 130], outline="black", width=3)
    batch = processor(text=[prompt], images=[page], return_tensors="pt")
    assert int((batch["input_ids"] == 151655).sum()) == 100  # 280 x 280 pixels: 10 x 10 merged patches
    blank = processor(text=[prompt], images=[Image.new("RGB", page.size, "white")], return_tensors="pt")
    assert blank["input_ids"].equal(batch["input_ids"])
    with torch.no_grad():
        drawn_logits, blank_logits = model(**batch).logits[0, -1], model(**blank).logits[0, -1]
    assert (drawn_logits - blank_logits).abs().max() > 1e-4


@pytest.mark.e2e
def test_qwen3_vl_merge_is_equivalent(qwen3_run: tuple[Any, Any], qwen3_adapters: tuple[Path, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m patentqa.train.merge`` on a Qwen3-VL LoRA checkpoint (the session's patentqa.train run of the tiny
    Qwen3-VL, in a copy of its run dir) over that run's own dev prompts (page images at 32 px a token): swift export
    merges it, and base + adapter and the merged model give the same tokens and first-step logits."""
    cfg, result = qwen3_run
    run_dir = tmp_path / qwen3_adapters[1].parent.name
    shutil.copytree(qwen3_adapters[1].parent, run_dir)
    ckpt = run_dir / qwen3_adapters[1].name
    dev = Path(json.loads((result.run_dir / "manifest.json").read_text())["dataset"]["dir"]) / "dev_eval.jsonl"
    report = merge.main([f"checkpoint={ckpt}", f"prompts={dev}", "k=4", "max_new_tokens=6", "min_new_tokens=4"])
    assert "[merge] equivalent: 4 prompts" in capsys.readouterr().out
    assert report.equivalent and Path(report.base_model) == Path(cfg.model.path), report.problems
    merged_config = json.loads((Path(report.merged_dir) / "config.json").read_text(encoding="utf-8"))
    assert merged_config["model_type"] == "qwen3_vl"
    eq = report.equivalence
    assert not eq.input_diffs and not eq.warnings and eq.dtype == "float32", eq.warnings
    assert eq.adapter_effect > 100 * eq.tolerance, (eq.adapter_effect, eq.tolerance)  # the adapter matters
    assert eq.max_logit_diff_prefix <= 5e-5, eq.max_logit_diff_prefix
    assert all(p.equal and len(p.adapter_tokens) >= 4 for p in eq.prompts)
