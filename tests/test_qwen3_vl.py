"""Qwen3-VL as a base model: its configs and token budgets at 32 px a token."""
from __future__ import annotations

import pytest

from patentqa.config import compose
from patentqa.data.build import prompt_config, render_spec
from patentqa.train.launch import launch_env

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
