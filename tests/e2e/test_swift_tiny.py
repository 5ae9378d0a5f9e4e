"""Real ms-swift on the tiny Qwen2.5-VL: `swift sft` (LoRA) -> `swift export --merge_lora` -> generate.

Runs on CPU in ~30 s. Proves the tiny model is compatible with the real training engine:
swift's qwen2_5_vl template expands `<image>` into `<|image_pad|>` ids (151655) that the
model's vision tower fills, and a merged checkpoint generates from a chat prompt with an image.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from swift_tiny_run import ANSWERS, run_or_fail

pytestmark = pytest.mark.e2e


def _swift_cli() -> list[str]:
    from patentqa.train.merge import MergeError, swift_command

    try:
        return swift_command()
    except MergeError as error:  # `make setup` installs ms-swift: its absence is a broken environment
        pytest.fail(f"{error} (run `make setup`)")


def _page(i: int, path: Path) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (280, 280), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([20 + 12 * i, 30, 120 + 12 * i, 130], outline="black", width=3)
    draw.ellipse([150, 150, 250, 250 - 6 * i], outline="black", width=2)
    draw.line([(10, 270), (270, 200 - 10 * i)], fill="black", width=2)
    draw.text((30, 200), str(i + 1), fill="black")
    img.save(path)
    return path


def _write_rows(work: Path) -> tuple[Path, Path]:
    rows = []
    for i in range(8):
        image = _page(i, work / f"page{i}.png")
        question = f"<image>在文件中第{i + 1}页的示意图中，编号为{i + 1}的部件位于哪里？"
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": ANSWERS[i % 4]},
                ],
                "images": [str(image)],
            }
        )
    for row in rows:
        assert row["messages"][0]["content"].count("<image>") == len(row["images"])
    train, val = work / "train.jsonl", work / "val.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:6]), encoding="utf-8")
    val.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[6:]), encoding="utf-8")
    return train, val


def _losses(logging_jsonl: Path) -> list[float]:
    losses = []
    for line in logging_jsonl.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses.append(float(record["loss"]))
    return losses


def test_swift_sft_export_generate(tiny_vl: Path, tmp_path: Path) -> None:
    swift = _swift_cli()
    train, val = _write_rows(tmp_path)
    out = tmp_path / "swift_out"
    max_steps = 4

    # 1. real `swift sft`, LoRA, CPU
    run_or_fail(
        swift
        + [
            "sft",
            "--model", str(tiny_vl),
            "--model_type", "qwen2_5_vl",
            "--template", "qwen2_5_vl",
            "--check_model", "false",
            "--tuner_type", "lora",
            "--lora_rank", "8",
            "--lora_alpha", "32",
            "--target_modules", "all-linear",
            "--max_steps", str(max_steps),
            "--per_device_train_batch_size", "1",
            "--per_device_eval_batch_size", "1",
            "--learning_rate", "1e-3",
            "--save_steps", str(max_steps),
            "--eval_steps", str(max_steps),
            "--logging_steps", "1",
            "--save_only_model", "true",
            "--dataloader_num_workers", "0",
            "--strict", "true",  # a row that fails to encode is an error, not silently swapped
            "--seed", "0",
            "--output_dir", str(out),
            "--dataset", str(train),
            "--val_dataset", str(val),
            "--report_to", "none",
        ],
        cwd=tmp_path,
        log=tmp_path / "sft.log",
    )
    run_dirs = sorted(out.glob("v*-*"))
    assert len(run_dirs) == 1, run_dirs
    checkpoint = run_dirs[0] / f"checkpoint-{max_steps}"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert (checkpoint / "adapter_config.json").is_file()
    losses = _losses(run_dirs[0] / "logging.jsonl")
    assert losses and all(math.isfinite(x) for x in losses), losses
    last = json.loads((run_dirs[0] / "logging.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert Path(last["last_model_checkpoint"]) == checkpoint
    # swift's template expanded <image> into the real <|image_pad|> id
    assert "151655" in (tmp_path / "sft.log").read_text(encoding="utf-8")

    # 2. real `swift export --merge_lora`
    run_or_fail(
        swift + ["export", "--adapters", str(checkpoint), "--merge_lora", "true"],
        cwd=tmp_path,
        log=tmp_path / "export.log",
    )
    merged = checkpoint.parent / f"{checkpoint.name}-merged"
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()

    from safetensors.torch import load_file

    base_w, merged_w = load_file(tiny_vl / "model.safetensors"), load_file(merged / "model.safetensors")
    assert not any("lora" in k for k in merged_w)
    assert set(merged_w) == set(base_w)
    assert any(not base_w[k].equal(merged_w[k]) for k in base_w), "merge changed no weight"

    # 3. transformers loads the merged checkpoint and generates from an image prompt
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(merged)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(merged).eval()
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "在文件中第1页的示意图中，编号为1的部件位于哪里？"}],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    from PIL import Image

    page = Image.open(_page(0, tmp_path / "query.png")).convert("RGB")
    batch = processor(text=[prompt], images=[page], return_tensors="pt")
    assert int((batch["input_ids"] == 151655).sum()) == 100
    try:
        with torch.no_grad():
            generated = model.generate(**batch, max_new_tokens=4, do_sample=False)
    except ValueError as err:  # e.g. "Image features and image tokens do not match"
        pytest.fail(f"generation with an image failed: {err}")
    new_tokens = generated[0, batch["input_ids"].shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    assert len(new_tokens) == 4 or new_tokens[-1] in eos, new_tokens  # stopped at the limit or at an end token
    # the page reaches the language model: another page (same size, so the same prompt ids) changes the next token's logits
    blank = processor(text=[prompt], images=[Image.new("RGB", page.size, "white")], return_tensors="pt")
    assert blank["input_ids"].equal(batch["input_ids"])
    with torch.no_grad():
        drawn_logits, blank_logits = model(**batch).logits[0, -1], model(**blank).logits[0, -1]
    assert (drawn_logits - blank_logits).abs().max() > 1e-4
