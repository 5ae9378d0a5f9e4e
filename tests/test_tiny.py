"""The tiny test models: real Qwen special-token ids, Chinese round-trip, image tokens, caching."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from patentqa.tiny import (
    EXTRA_TOKENS,
    FIRST_SPECIAL_ID,
    SPECIAL_TOKENS,
    recipe_digest,
    QWEN2_5_VL_RECIPE,
    tiny_qwen2_5_vl,
)

QWEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|box_start|>": 151648,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}


def _page(width: int = 280, height: int = 280):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([20, 30, width // 2, height // 2], outline="black", width=3)
    draw.ellipse([width // 2, height // 2, width - 10, height - 10], outline="black", width=2)
    draw.text((10, 10), "7", fill="black")
    return img


def _messages(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def processor(tiny_vl: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vl)


def test_tokenizer_has_real_qwen_special_ids(tiny_vl: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_vl)
    for token, token_id in QWEN_IDS.items():
        assert tok.convert_tokens_to_ids(token) == token_id, token
    for i, token in enumerate(SPECIAL_TOKENS + EXTRA_TOKENS):
        assert tok.convert_tokens_to_ids(token) == FIRST_SPECIAL_ID + i
    assert len(tok) == 151665
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == 151643
    # special tokens are single ids inside text
    ids = tok.encode("<|vision_start|><|image_pad|><|vision_end|>")
    assert ids == [151652, 151655, 151653]


@pytest.mark.parametrize(
    "text",
    [
        "在文件中第10页的示意图中，编号为7的部件位于左侧上方。",
        "权利要求1：所述风扇位于壳体的右侧，散热片设置在风扇的下方。",
        "未见过的字也能往返：鑫龘 ① ABC abc 2025",
    ],
    ids=["question", "claim", "unseen-chars"],
)
def test_chinese_round_trip(tiny_vl: Path, text: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_vl)
    ids = tok.encode(text)
    assert all(i < FIRST_SPECIAL_ID for i in ids)
    assert tok.decode(ids) == text


def test_bpe_learned_the_corpus(tiny_vl: Path) -> None:
    """Merges were learned: common patent words take fewer ids than their UTF-8 bytes."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_vl)
    text = "部件位于左侧"
    assert len(tok.encode(text)) < len(text.encode("utf-8")) // 2


def test_chat_template_is_qwen_style(processor) -> None:
    prompt = processor.apply_chat_template(_messages("部件7位于哪里？"), add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>部件7位于哪里？<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("size", [(280, 280), (224, 336)], ids=["square", "portrait"])
def test_processor_expands_image_pad(processor, size: tuple[int, int]) -> None:
    prompt = processor.apply_chat_template(_messages("部件7位于哪里？"), add_generation_prompt=True, tokenize=False)
    batch = processor(text=[prompt], images=[_page(*size)], return_tensors="pt")
    grid = batch["image_grid_thw"][0]
    merge = processor.image_processor.merge_size
    expected = int(grid.prod()) // merge**2
    assert expected == (size[0] // 28) * (size[1] // 28)
    assert int((batch["input_ids"] == 151655).sum()) == expected
    assert batch["pixel_values"].shape[0] == int(grid.prod())


def test_model_forward_and_generate_with_image(tiny_vl: Path, processor) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_vl).eval()
    assert model.config.text_config.hidden_size == 64
    assert 15e6 < sum(p.numel() for p in model.parameters()) < 25e6
    prompt = processor.apply_chat_template(_messages("部件7位于哪里？"), add_generation_prompt=True, tokenize=False)
    batch = processor(text=[prompt], images=[_page()], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert logits.shape[:2] == batch["input_ids"].shape and logits.shape[-1] == 151680
    assert torch.isfinite(logits).all()
    assert out.shape[1] > batch["input_ids"].shape[1]


def test_embedder_last_token_hidden_state(tiny_embedder: Path) -> None:
    import torch
    from transformers import AutoProcessor, AutoTokenizer, Qwen2VLForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tiny_embedder)
    assert tok.convert_tokens_to_ids("<|image_pad|>") == 151655
    processor = AutoProcessor.from_pretrained(tiny_embedder)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_embedder).eval()
    assert model.config.model_type == "qwen2_vl"
    text = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>第3页<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
    )
    batch = processor(text=[text], images=[_page()], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
    assert hidden.shape[-1] == 64 and torch.isfinite(hidden[0, -1]).all()


def test_second_call_is_cached(tiny_vl: Path) -> None:
    marker = tiny_vl / "tiny.json"
    mtime, weights_mtime = marker.stat().st_mtime_ns, (tiny_vl / "model.safetensors").stat().st_mtime_ns
    again = tiny_qwen2_5_vl(tiny_vl.parent)  # cached: the marker is not rewritten (no wall-clock bound: benchmarks time)
    assert again == tiny_vl
    assert marker.stat().st_mtime_ns == mtime and (tiny_vl / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert json.loads(marker.read_text())["digest"] == recipe_digest(QWEN2_5_VL_RECIPE)


def test_stale_marker_rebuilds_atomically(tiny_vl: Path, tmp_path: Path) -> None:
    stale = tmp_path / "qwen2_5_vl"
    shutil.copytree(tiny_vl, stale)
    (stale / "tiny.json").write_text(json.dumps({"digest": "old-recipe"}))
    (stale / "leftover.txt").write_text("from the old build")
    built = tiny_qwen2_5_vl(tmp_path)
    assert built == stale
    assert json.loads((built / "tiny.json").read_text())["digest"] == recipe_digest(QWEN2_5_VL_RECIPE)
    assert not (built / "leftover.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen2_5_vl"]  # no temp dirs left
    # deterministic: same weights as the cached build
    assert (built / "model.safetensors").read_bytes() == (tiny_vl / "model.safetensors").read_bytes()


def test_synthetic_answers_are_few_tokens_and_fillers_never_win(tiny_vl: Path) -> None:
    """The synthetic vocabulary is in the BPE (answers are whole words, not byte runs), and the
    untrained model's greedy pick is a real token: filler rows are zero, real rows are not."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from patentqa.tiny import _first_filler

    tok = AutoTokenizer.from_pretrained(tiny_vl)
    for answer in ("连接两侧立柱并承载滑座", "保证了加工精度", "部件7位于部件6的右侧"):
        assert len(tok.encode(answer)) <= 6, tok.tokenize(answer)
    first_filler = _first_filler(tok)
    head = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_vl).get_output_embeddings().weight
    assert torch.count_nonzero(head[first_filler:FIRST_SPECIAL_ID]) == 0
    assert bool((head[:first_filler].norm(dim=1) > 1).all())
    assert bool((head[FIRST_SPECIAL_ID:].norm(dim=1) > 1).all())
