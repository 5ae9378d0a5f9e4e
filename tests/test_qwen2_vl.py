"""Qwen2-VL as a base model (write-up 001's family): its published configs on the meta device, budgets in pixels
at 28 px a token, the tiny answerer, and the one prompt builder through swift's ``qwen2_vl`` template,
token-identical to inference (the default system prompt on both sides)."""
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
from patentqa.data.prompts import PageImage, build_prompt, to_swift_row
from patentqa.infer.align import training_prompt_ids
from patentqa.infer.inputs import encode_prompts
from patentqa.train.launch import launch_env

IMAGE_PAD = 151655
# the parameter counts the released checkpoints' model cards state
PARAMS = {"qwen2_vl_72b": 73.4e9, "qwen2_vl_7b": 8.29e9, "qwen2_vl_2b": 2.21e9}


@pytest.mark.parametrize("name", PARAMS)
def test_model_config_builds_a_qwen2_vl_on_the_meta_device(name: str) -> None:
    from transformers import Qwen2VLConfig

    from patentqa.train.plan import meta_model, model_config, tower_params

    model = compose(["+exp=lora_r8", f"model={name}"]).model
    assert (model.model_type, model.template, model.image_factor, model.torch_dtype) == (
        "qwen2_vl", "qwen2_vl", 28, "bfloat16")
    assert model.path == f"Qwen/Qwen2-VL-{name.split('_')[2].upper()}-Instruct"
    config, source = model_config(model)
    assert isinstance(config, Qwen2VLConfig) and "config.json" in source
    assert config.vision_config.patch_size * config.vision_config.spatial_merge_size == model.image_factor
    assert config.vision_config.hidden_size == config.text_config.hidden_size
    assert tower_params(meta_model(config))["total"] == pytest.approx(PARAMS[name], rel=2e-3)


def test_qwen2_vl_budgets_are_pixels_at_28_px() -> None:
    cfg = compose(["+exp=lora_r8", "model=qwen2_vl_7b"])
    assert prompt_config(cfg).max_pixels == {"with_context": 2000 * 28 * 28, "figure_only": 3000 * 28 * 28}
    assert render_spec(cfg).key().startswith("px2352000-min3136-f28-")
    env = launch_env(cfg)  # swift's qwen2_vl loader reads MAX_PIXELS, as Qwen2.5-VL's does
    assert env["MAX_PIXELS"] == str(3000 * 28 * 28) and "IMAGE_MAX_TOKEN_NUM" not in env


@pytest.fixture(scope="module")
def tiny() -> Path:
    from patentqa.tiny import tiny_qwen2_vl

    return tiny_qwen2_vl(cache_root() / "tiny")


@pytest.fixture(scope="module")
def processor(tiny: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny)


def test_tiny_qwen2_vl_has_qwens_ids_and_28_px_tokens(tiny: Path, processor: Any) -> None:
    from patentqa.tiny import QWEN2_VL_RECIPE, recipe_digest, tiny_answerer

    config = json.loads((tiny / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]
    assert (config["image_token_id"], config["vision_start_token_id"]) == (IMAGE_PAD, 151652)
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == IMAGE_PAD
    assert processor.image_processor.patch_size * processor.image_processor.merge_size == 28
    assert json.loads((tiny / "tiny.json").read_text())["digest"] == recipe_digest(QWEN2_VL_RECIPE)
    assert tiny_answerer("qwen2_vl", tiny.parent) == tiny


def _page(path: Path, number: int) -> PageImage:
    page = Image.new("RGB", (620, 877), "white")
    draw = ImageDraw.Draw(page)
    draw.rectangle([60 + 20 * number, 120, 400, 500], outline="black", width=5)
    draw.text((565, 195 + 30 * number), str(number), fill="black")
    page.save(path)
    return PageImage(number, str(path))


def test_swift_qwen2_vl_training_prompt_equals_inference_prompt(tiny: Path, processor: Any,
                                                                 tmp_path: Path) -> None:
    """Every form, rendered by ``swift sft --model_type qwen2_vl --template qwen2_vl``'s encoder and by inference:
    the same ids (the default system prompt first), grids and pixels, within the 28 px budget."""
    from patentqa.infer.align import swift_encoder

    pages = [_page(tmp_path / f"p{i}.png", i) for i in range(1, 4)]
    config = prompt_config(compose(["+exp=smoke", "model=tiny_qwen2_vl"]))
    question = "在文件中第1页的示意图中，部件1位于部件2的什么位置？"
    prompts = [build_prompt(config, question, "with_context", pages[0], pages[1:]),
               build_prompt(config, question, "figure_only", pages[0], []),
               build_prompt(config, "该专利要解决的技术问题是什么？", "document", None, pages[1:])]
    encoder = swift_encoder({"model": str(tiny), "model_type": "qwen2_vl", "template": "qwen2_vl"}, tmp_path / "swift")
    system = processor.tokenizer.encode("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    for prompt, trained in zip(prompts, encoder.encode([to_swift_row(p, "滤网") for p in prompts])):
        ids = training_prompt_ids(trained)
        ours = encode_prompts(processor, [prompt], factor=28)
        assert ours["input_ids"][0].tolist() == ids, prompt.form
        assert ids[:len(system)] == system
        assert torch.equal(ours["image_grid_thw"], trained["image_grid_thw"])
        assert torch.equal(ours["pixel_values"], trained["pixel_values"])
        grid = trained["image_grid_thw"]
        assert (grid[:, 1] * grid[:, 2] * 14 * 14 <= prompt.images[0].max_pixels).all()
        assert ids.count(IMAGE_PAD) == int(grid.prod(dim=1).sum()) // 4
