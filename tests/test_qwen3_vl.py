"""Qwen3-VL as a base model: its configs, token budgets at 32 px a token, the tiny model, and the one prompt
builder rendered through its own template, token-identical between swift's training template and inference."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import cache_root
from patentqa.config import compose
from patentqa.data.build import prompt_config, render_spec
from patentqa.data.prompts import PageImage, Prompt, build_prompt, to_swift_row
from patentqa.infer.align import training_prompt_ids
from patentqa.infer.inputs import encode_prompts
from patentqa.train.launch import launch_env

IMAGE_PAD = 151655
# the sizes of the released checkpoints (the parameter counts their hub pages round to)
PARAMS = {"qwen3_vl_32b": 33.36e9, "qwen3_vl_8b": 8.77e9, "qwen3_vl_4b": 4.44e9, "qwen3_vl_2b": 2.13e9}


@pytest.mark.parametrize("name", [*PARAMS, "qwen3_vl_8b_thinking"])
def test_model_config_builds_a_qwen3_vl_on_the_meta_device(name: str) -> None:
    from transformers import Qwen3VLConfig

    from patentqa.train.plan import meta_model, model_config, tower_params

    cfg = compose(["+exp=lora_r8", f"model={name}"])
    model = cfg.model
    assert (model.model_type, model.template, model.image_factor, model.torch_dtype) == (
        "qwen3_vl", "qwen3_vl", 32, "bfloat16")
    assert model.path == "Qwen/Qwen3-VL-{}-{}".format(name.split("_")[2].upper(),
                                                      "Thinking" if name.endswith("thinking") else "Instruct")
    config, source = model_config(model)
    assert isinstance(config, Qwen3VLConfig) and "config.json" in source
    vision = config.vision_config
    assert vision.patch_size * vision.spatial_merge_size == model.image_factor
    assert vision.out_hidden_size == config.text_config.hidden_size and config.text_config.head_dim == 128
    params = tower_params(meta_model(config))["total"]
    assert params == pytest.approx(PARAMS[name.removesuffix("_thinking")], rel=2e-3)


def test_qwen3_vl_budgets_are_tokens_of_32_px() -> None:
    cfg = compose(["+exp=lora_r8", "model=qwen3_vl_32b"])
    config = prompt_config(cfg)
    assert config.max_pixels == {"with_context": 2000 * 32 * 32, "figure_only": 3000 * 32 * 32}
    assert config.min_pixels == 4 * 32 * 32
    assert render_spec(cfg).key().startswith("px3072000-min4096-f32-")
    env = launch_env(cfg)  # swift's qwen3_vl reads tokens; a MAX_PIXELS would be divided by its own 32²
    assert env["IMAGE_MAX_TOKEN_NUM"] == "3000" and env["IMAGE_MIN_TOKEN_NUM"] == "4" and "MAX_PIXELS" not in env


# --- the tiny Qwen3-VL -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_qwen3() -> Path:
    from patentqa.tiny import tiny_qwen3_vl

    return tiny_qwen3_vl(cache_root() / "tiny")


@pytest.fixture(scope="module")
def processor(tiny_qwen3: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_qwen3)


def test_tiny_qwen3_vl_has_qwens_ids_and_32_px_tokens(tiny_qwen3: Path, processor: Any) -> None:
    from patentqa.tiny import QWEN3_VL_RECIPE, recipe_digest, tiny_answerer

    config = json.loads((tiny_qwen3 / "config.json").read_text())
    assert config["architectures"] == ["Qwen3VLForConditionalGeneration"]
    assert (config["image_token_id"], config["vision_start_token_id"], config["vision_end_token_id"]) == (
        IMAGE_PAD, 151652, 151653)
    assert config["text_config"]["head_dim"] == 32 and config["vision_config"]["patch_size"] == 16
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == IMAGE_PAD
    assert processor.image_processor.patch_size * processor.image_processor.merge_size == 32
    marker = json.loads((tiny_qwen3 / "tiny.json").read_text())
    assert marker["digest"] == recipe_digest(QWEN3_VL_RECIPE)  # cached: the same recipe is not rebuilt
    assert tiny_answerer("qwen3_vl", tiny_qwen3.parent) == tiny_qwen3
    with pytest.raises(ValueError, match="no tiny model"):
        tiny_answerer("llava", tiny_qwen3.parent)


def _page(path: Path, number: int) -> PageImage:
    """A drawn A4-shaped page: a box, a leader line and a part number."""
    page = Image.new("RGB", (620, 877), "white")
    draw = ImageDraw.Draw(page)
    draw.rectangle([60 + 20 * number, 120, 400, 500], outline="black", width=5)
    draw.line([(400, 300), (560, 200 + 30 * number)], fill="black", width=3)
    draw.text((565, 195 + 30 * number), str(number), fill="black")
    page.save(path)
    return PageImage(number, str(path))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> list[Prompt]:
    """One prompt of each form at the smoke budgets (64 / 128 tokens) on Qwen3-VL's factor."""
    root = tmp_path_factory.mktemp("qwen3_pages")
    pages = [_page(root / f"p{i}.png", i) for i in range(1, 4)]
    config = prompt_config(compose(["+exp=smoke", "model=tiny_qwen3_vl"]))
    question = "在文件中第1页的示意图中，部件1位于部件2的什么位置？"
    return [build_prompt(config, question, "with_context", pages[0], pages[1:]),
            build_prompt(config, question, "figure_only", pages[0], []),
            build_prompt(config, "该专利要解决的技术问题是什么？", "document", None, pages[1:])]


@pytest.fixture(scope="module")
def swift_encode(tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Rows encoded as ``swift sft --model_type qwen3_vl --template qwen3_vl`` encodes its dataset."""
    from patentqa.infer.align import swift_encoder

    flags = {"model": str(tiny_qwen3), "model_type": "qwen3_vl", "template": "qwen3_vl"}
    return swift_encoder(flags, tmp_path_factory.mktemp("qwen3_swift")).encode


def test_swift_qwen3_vl_training_prompt_equals_inference_prompt(prompts, processor, swift_encode) -> None:
    """For every form: same ids (no default system prompt on either side), same grids, same pixels."""
    start = processor.tokenizer.encode("<|im_start|>user\n")
    encoded = swift_encode([to_swift_row(prompt, "滤网") for prompt in prompts])
    for prompt, trained in zip(prompts, encoded):
        ids = training_prompt_ids(trained)
        ours = encode_prompts(processor, [prompt], factor=32)
        assert ours["input_ids"][0].tolist() == ids, prompt.form
        assert ids[:len(start)] == start  # the user turn first: Qwen3-VL's template adds no system prompt
        assert torch.equal(ours["image_grid_thw"], trained["image_grid_thw"])
        assert torch.equal(ours["pixel_values"], trained["pixel_values"])
        grid = trained["image_grid_thw"]
        assert (grid[:, 1] * grid[:, 2] * 16 * 16 <= prompt.images[0].max_pixels).all()  # within the budget
        assert ids.count(IMAGE_PAD) == int(grid.prod(dim=1).sum()) // 4  # 2×2 patches merge into one token
