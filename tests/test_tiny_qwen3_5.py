"""The tiny Qwen3.5: Qwen3.5's real special ids, a hybrid (Gated DeltaNet + attention) config, generation from a
page image, and ms-swift's ``qwen3_5`` template encoding what the released chat template renders, thinking off and on."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import cache_root

# Qwen3.5's added tokens at their real ids; swift's Qwen3_5Template hard-codes 248056/248057
QWEN3_5_IDS = {
    "<|endoftext|>": 248044,
    "<|im_start|>": 248045,
    "<|im_end|>": 248046,
    "<|vision_start|>": 248053,
    "<|vision_end|>": 248054,
    "<|image_pad|>": 248056,
    "<|video_pad|>": 248057,
    "<think>": 248068,
    "</think>": 248069,
}
IMAGE_PAD = QWEN3_5_IDS["<|image_pad|>"]
QUESTION = "在文件中第1页的示意图中，部件1位于部件2的什么位置？"


@pytest.fixture(scope="module")
def tiny_qwen3_5() -> Path:
    """The session cache's tiny Qwen3.5 (built on first use, reused after: the recipe digest decides)."""
    from patentqa.tiny import tiny_qwen3_5

    return tiny_qwen3_5(cache_root() / "tiny")


@pytest.fixture(scope="module")
def processor(tiny_qwen3_5: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_qwen3_5)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A drawn 320×256 page: 16×20 patches of 16 px, 80 visual tokens after the 2×2 merge."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 256), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([30, 40, 200, 180], outline="black", width=3)
    draw.line([(200, 110), (290, 60)], fill="black", width=2)
    draw.text((292, 52), "1", fill="black")
    path = tmp_path_factory.mktemp("qwen3_5_page") / "page.png"
    image.save(path)
    return path


def _messages(answer: str | None = None) -> list[dict[str, Any]]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _hf_ids(processor: Any, page: Path, thinking: bool, answer: str | None = None) -> list[int]:
    """The HF processor's ids for the page + question (a generation prompt, or the whole conversation)."""
    from PIL import Image

    text = processor.apply_chat_template(_messages(answer), add_generation_prompt=answer is None,
                                         enable_thinking=thinking)
    return list(processor(text=[text], images=[Image.open(page)], return_tensors="pt")["input_ids"][0].tolist())


def test_tokenizer_and_configs_carry_qwen3_5s_real_ids(tiny_qwen3_5: Path, processor: Any) -> None:
    from patentqa.tiny import QWEN3_5_RECIPE, recipe_digest, tiny_answerer

    tok = processor.tokenizer
    for token, token_id in QWEN3_5_IDS.items():
        assert tok.convert_tokens_to_ids(token) == token_id, token
    assert len(tok) == 248077  # 248044 BPE entries + 33 added tokens, as the released tokenizer
    assert (tok.eos_token, tok.pad_token_id) == ("<|im_end|>", 248044)
    assert tok.encode("<|vision_start|><|image_pad|><|vision_end|><think></think>", add_special_tokens=False) == [
        248053, 248056, 248054, 248068, 248069]
    assert processor.image_token_id == IMAGE_PAD

    config = json.loads((tiny_qwen3_5 / "config.json").read_text())
    assert config["architectures"] == ["Qwen3_5ForConditionalGeneration"] and config["model_type"] == "qwen3_5"
    assert (config["image_token_id"], config["video_token_id"], config["vision_start_token_id"],
            config["vision_end_token_id"]) == (248056, 248057, 248053, 248054)
    vocab = config["text_config"]["vocab_size"]
    assert vocab >= len(tok) and vocab % 64 == 0 and vocab == 248320
    generation = json.loads((tiny_qwen3_5 / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [248046, 248044] and generation["pad_token_id"] == 248044
    assert not generation["do_sample"]

    marker = json.loads((tiny_qwen3_5 / "tiny.json").read_text())
    assert marker["digest"] == recipe_digest(QWEN3_5_RECIPE)  # cached: the same recipe is not rebuilt
    assert tiny_answerer("qwen3_5", tiny_qwen3_5.parent) == tiny_qwen3_5


def test_the_config_is_hybrid_with_vllms_cpu_head_dims_and_the_released_template(tiny_qwen3_5: Path,
                                                                                 processor: Any) -> None:
    from safetensors import safe_open

    from patentqa.tiny.tokenizer import QWEN3_5_CHAT_TEMPLATE_SHA256

    text = json.loads((tiny_qwen3_5 / "config.json").read_text())["text_config"]
    assert text["layer_types"] == ["linear_attention", "full_attention"]  # full_attention_interval 2: hybrid
    assert (text["linear_key_head_dim"], text["linear_value_head_dim"]) == (64, 64)  # vLLM's CPU GDN: 64 or 128
    assert text["head_dim"] == 64 and text["rope_parameters"]["partial_rotary_factor"] == 0.25
    assert text["rope_parameters"]["mrope_section"] == [3, 3, 2] and text["rope_parameters"]["mrope_interleaved"]
    with safe_open(str(tiny_qwen3_5 / "model.safetensors"), "pt") as weights:
        kept = [k for k in weights.keys() if k.endswith(("linear_attn.A_log", "linear_attn.norm.weight"))]
        assert len(kept) == 2 and all(weights.get_slice(k).get_dtype() == "F32" for k in kept)
    template = (tiny_qwen3_5 / "chat_template.jinja").read_text(encoding="utf-8")
    assert hashlib.sha256(template.encode("utf-8")).hexdigest() == QWEN3_5_CHAT_TEMPLATE_SHA256
    assert processor.image_processor.patch_size * processor.image_processor.merge_size == 32


def test_generate_from_a_page_with_80_image_tokens(tiny_qwen3_5: Path, processor: Any, page: Path) -> None:
    import torch
    from PIL import Image
    from transformers import Qwen3_5ForConditionalGeneration

    text = processor.apply_chat_template(_messages(), add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    inputs = processor(text=[text], images=[Image.open(page)], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 20]]  # 256 px high, 320 wide, 16 px patches
    assert inputs["input_ids"][0].tolist().count(IMAGE_PAD) == 80  # 16 × 20 / (2 × 2)
    model = Qwen3_5ForConditionalGeneration.from_pretrained(tiny_qwen3_5, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert new and all(0 <= t < len(processor.tokenizer) for t in new), new


def test_swift_qwen3_5_template_encodes_the_released_chat_templates_ids(tiny_qwen3_5: Path, processor: Any,
                                                                        page: Path,
                                                                        tmp_path_factory: pytest.TempPathFactory
                                                                        ) -> None:
    """``swift sft --model_type qwen3_5 --template qwen3_5``'s encoder (thinking per row, chat_template_kwargs):
    thinking off, its prompt is the HF generation prompt (empty think block) and its row the whole conversation;
    thinking on, a row with reasoning is the whole conversation; in inference mode it opens ``<think>\\n``."""
    from patentqa.infer.align import swift_encoder, training_prompt_ids

    flags = {"model": str(tiny_qwen3_5), "model_type": "qwen3_5", "template": "qwen3_5"}
    encoder = swift_encoder(flags, tmp_path_factory.mktemp("qwen3_5_swift"))
    user = {"role": "user", "content": "<image>" + QUESTION}
    reasoned = "<think>\n部件1在部件2的左边\n</think>\n\n左侧"
    rows = [{"messages": [user, {"role": "assistant", "content": "左侧"}], "images": [str(page)],
             "chat_template_kwargs": {"enable_thinking": False}},
            {"messages": [user, {"role": "assistant", "content": reasoned}], "images": [str(page)],
             "chat_template_kwargs": {"enable_thinking": True}}]
    off, on = encoder.encode(rows)
    assert training_prompt_ids(off) == _hf_ids(processor, page, thinking=False)
    assert list(off["input_ids"]) == _hf_ids(processor, page, thinking=False, answer="左侧")
    assert list(on["input_ids"]) == _hf_ids(processor, page, thinking=True, answer=reasoned)
    assert training_prompt_ids(off).count(IMAGE_PAD) == 80

    encoder.template.set_mode("transformers")  # inference: the generation prompt, thinking as the row asks
    for thinking in (False, True):
        encoded = encoder.template.encode({"messages": [user], "images": [str(page)],
                                           "chat_template_kwargs": {"enable_thinking": thinking}})
        assert list(encoded["input_ids"]) == _hf_ids(processor, page, thinking=thinking), thinking
