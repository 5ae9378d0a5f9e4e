"""Image budgets are visual tokens; each model family turns them into pixels with its own factor.

For Qwen2.5-VL (28 px a token) the token budgets mean exactly the pixels the configs used to state,
so the page cache keys and the MAX_PIXELS swift gets are what they were before budgets were tokens.
"""
from __future__ import annotations

import dataclasses

import pytest

from patentqa.config import compose
from patentqa.data.build import prompt_config, render_spec
from patentqa.data.pages import RenderSpec
from patentqa.data.prompts import pixels
from patentqa.train.launch import launch_env

# the pixel budgets the configs stated before they were tokens (conf/prompt/seed_b.yaml, conf/exp/smoke.yaml)
SEED_PIXELS = {"with_context": 1_568_000, "figure_only": 2_352_000}
SMOKE_PIXELS = {"with_context": 50_176, "figure_only": 100_352}


def test_the_seeds_pixel_budgets_are_whole_tokens_at_28_px() -> None:
    assert pixels(1568, 28) == 1_229_312  # the seed's training MAX_PIXELS
    assert pixels(2000, 28) == 1_568_000 and pixels(3000, 28) == 2_352_000
    assert pixels(64, 28) == 50_176 and pixels(128, 28) == 100_352 and pixels(4, 28) == 3136
    assert pixels(64, 32) == 65_536  # a Qwen3-VL token is 32 px square


@pytest.mark.parametrize(("exp", "old"), [("lora_r8", SEED_PIXELS), ("smoke", SMOKE_PIXELS)])
def test_qwen2_5_vl_budgets_cache_keys_and_env_are_unchanged(exp: str, old: dict[str, int]) -> None:
    cfg = compose([f"+exp={exp}"])
    assert cfg.model.model_type == "qwen2_5_vl" and cfg.model.image_factor == 28
    config = prompt_config(cfg)
    assert config.max_pixels == old and config.min_pixels == 3136
    spec = render_spec(cfg)
    before = RenderSpec(max_pixels=max(old.values()), min_pixels=3136, factor=28, colorspace=spec.colorspace,
                        format=spec.format, jpeg_quality=spec.jpeg_quality, color_management=spec.color_management)
    assert spec.key() == before.key() == f"px{max(old.values())}-min3136-f28-{spec.colorspace}-noicc-q90-pil"
    env = launch_env(cfg)
    assert env["MAX_PIXELS"] == str(max(old.values())) and "IMAGE_MAX_TOKEN_NUM" not in env


def test_a_budget_is_the_same_tokens_on_another_factor() -> None:
    cfg = compose(["+exp=smoke", "model.image_factor=32"])
    config = prompt_config(cfg)
    assert config.max_pixels == {"with_context": 64 * 32 * 32, "figure_only": 128 * 32 * 32}
    assert config.min_pixels == 4 * 32 * 32
    assert render_spec(cfg).key().startswith("px131072-min4096-f32-")
    spec = render_spec(cfg)
    assert dataclasses.replace(spec, factor=28).key() != spec.key()  # the factor alone changes the page cache key
