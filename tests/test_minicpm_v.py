"""MiniCPM-V 4.6 as a base model: its published architecture on the meta device, the slicing token budget (the
installed processor's own counts, the rule that turns a run's budgets into one slice setting, what reaches swift
and the engines), and the tiny model's tokens and template."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import cache_root
from patentqa.config import compose
from patentqa.models import family
from patentqa.models.minicpm_v import slice_rule, slice_tokens
from patentqa.train.launch import launch_env

MINICPM = family("minicpmv4_6")


def processor_tokens(height: int, width: int, **settings: Any) -> int:
    """Visual tokens MiniCPM-V 4.6's image processor gives a blank page: its target sizes' patches / 16 or / 4."""
    from transformers import MiniCPMV4_6ImageProcessor

    out = MiniCPMV4_6ImageProcessor()(Image.new("RGB", (width, height), "white"), return_tensors="pt", **settings)
    divisor = 4 if settings.get("downsample_mode") == "4x" else 16
    return int((out["target_sizes"].prod(-1) // divisor).sum())


@pytest.mark.parametrize("size, settings", [
    ((1400, 1000), {}), ((1400, 1000), {"max_slice_nums": 1}), ((1400, 1000), {"downsample_mode": "4x"}),
    ((1820, 1288), {"max_slice_nums": 6, "downsample_mode": "4x"}), ((252, 168), {"max_slice_nums": 1}),
    ((560, 392), {"max_slice_nums": 9, "downsample_mode": "4x"}), ((3508, 2480), {"max_slice_nums": 4})])
def test_slice_tokens_equal_the_image_processors_own_count(size: tuple[int, int], settings: dict) -> None:
    assert slice_tokens(*size, settings) == processor_tokens(*size, **settings)


def test_a_1000_by_1400_page_is_447_tokens_by_default_and_63_with_one_slice() -> None:
    """FACTS.md's probe: swift's template, the HF processor and vLLM all gave these."""
    assert MINICPM.image_tokens(1400, 1000) == 447 and MINICPM.image_tokens(1400, 1000, {"max_slice_nums": 1}) == 63


def test_the_rule_takes_the_most_tokens_within_every_forms_budget() -> None:
    pages = {"with_context": (1484, 1036), "figure_only": (1820, 1288)}  # A4 at 2000 / 3000 tokens x 28²
    chosen = slice_rule(pages, {"with_context": 2000, "figure_only": 3000})
    assert chosen == {"max_slice_nums": 6, "downsample_mode": "4x"}
    assert [slice_tokens(*pages[f], chosen) for f in pages] == [1816, 1816]
    # 7 slices cut these pages as 6 do (the grid nearest the page's aspect); 8 overrun the 2000-token form
    assert slice_tokens(*pages["with_context"], {"max_slice_nums": 7, "downsample_mode": "4x"}) == 1816
    assert slice_tokens(*pages["with_context"], {"max_slice_nums": 8, "downsample_mode": "4x"}) == 2296
    # every setting that fits gives fewer tokens in all
    for mode in ("16x", "4x"):
        for n in range(1, 10):
            tokens = [slice_tokens(*pages[f], {"max_slice_nums": n, "downsample_mode": mode}) for f in pages]
            if tokens[0] <= 2000 and tokens[1] <= 3000:
                assert sum(tokens) <= 2 * 1816, (n, mode, tokens)
    # small budgets: 16x; below the least setting's tokens, the least setting
    assert slice_rule(pages, {"with_context": 500, "figure_only": 700})["downsample_mode"] == "16x"
    assert slice_rule(pages, {"with_context": 10, "figure_only": 10}) == {"max_slice_nums": 1, "downsample_mode": "16x"}


def test_the_runs_slice_setting_reaches_swift_and_every_engine() -> None:
    cfg = compose(["+exp=lora_r8", "model=minicpm_v_4_6"])
    assert (cfg.model.model_type, cfg.model.template, cfg.model.image_factor) == ("minicpmv4_6", "minicpmv4_6", 28)
    assert dict(cfg.model.slices) == {"max_slice_nums": 6, "downsample_mode": "4x"}
    env = launch_env(cfg)  # swift's template reads one setting a run
    assert (env["MAX_SLICE_NUMS"], env["DOWNSAMPLE_MODE"]) == ("6", "4x")
    assert not {"MAX_PIXELS", "IMAGE_MAX_TOKEN_NUM"} & set(env)
    assert MINICPM.image_kwargs(cfg.model.slices) == {"max_slice_nums": 6, "downsample_mode": "4x"}
    assert MINICPM.generate_kwargs(cfg.model.slices) == {"downsample_mode": "4x"}
    # a Qwen family keeps its one rule: images at their budget, no second resize, nothing more to the model
    assert family("qwen3_5").image_kwargs(None) == {"do_resize": False} and family("qwen3_5").generate_kwargs({}) == {}
    overridden = compose(["+exp=lora_r8", "model=minicpm_v_4_6", "model.slices={max_slice_nums:2,downsample_mode:16x}"])
    assert (launch_env(overridden)["MAX_SLICE_NUMS"], launch_env(overridden)["DOWNSAMPLE_MODE"]) == ("2", "16x")
    from patentqa.infer.engines.openai_engine import chat_request
    from patentqa.infer.engines.vllm_engine import llm_kwargs
    from patentqa.config import group_config

    assert llm_kwargs(group_config("infer", "vllm"), cfg.model, None)["mm_processor_kwargs"] == dict(cfg.model.slices)


def test_the_dry_run_plan_counts_its_published_architecture_and_slice_tokens() -> None:
    from transformers import MiniCPMV4_6Config

    from patentqa.train.plan import meta_model, model_config, prompt_tokens, tower_params
    from patentqa.tiny.minicpm_v import build_minicpm_tokenizer

    cfg = compose(["+exp=lora_r8", "model=minicpm_v_4_6"])
    config, source = model_config(cfg.model)
    assert isinstance(config, MiniCPMV4_6Config) and "config.json" in source
    assert config.insert_layer_id == 6 and config.vision_config.patch_size * 2 == cfg.model.image_factor
    params = tower_params(meta_model(config))
    assert params["total"] == pytest.approx(1.300e9, rel=1e-3)  # "about 1.3B parameters"
    assert params["vision tower"] == pytest.approx(0.548e9, rel=1e-3)  # SigLIP tower + window merger + merger MLP
    cache = MINICPM.cache_spec(config)  # Qwen3.5-0.8B's text: 6 full-attention layers in 24
    assert (cache.full_layers, cache.linear_layers) == (6, 18)
    assert cache.kv_bytes_per_token(1, 2) == 6 * 2 * 2 * 256 * 2
    tokens = prompt_tokens(cfg, build_minicpm_tokenizer(), None)  # an A4 page a image, the slice setting's count
    assert tokens["figure_only"]["image_tokens"] == 1816 and tokens["with_context"]["image_tokens"] == 1816


@pytest.fixture(scope="module")
def tiny() -> Path:
    from patentqa.tiny import tiny_minicpm_v_4_6

    return tiny_minicpm_v_4_6(cache_root() / "tiny")


def test_tiny_minicpm_v_has_qwen3_5_ids_minicpms_slice_tokens_and_swifts_image_tag(tiny: Path) -> None:
    from transformers import AutoProcessor

    from patentqa.tiny import MINICPM_V_4_6_RECIPE, recipe_digest, tiny_answerer

    config = json.loads((tiny / "config.json").read_text())
    assert config["architectures"] == ["MiniCPMV4_6ForConditionalGeneration"] and config["insert_layer_id"] == 0
    assert config["vision_config"]["num_hidden_layers"] > config["insert_layer_id"]  # or the window merger never runs
    assert config["text_config"]["linear_key_head_dim"] == config["text_config"]["linear_value_head_dim"] == 64
    processor = AutoProcessor.from_pretrained(tiny)
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == config["image_token_id"] == 248056
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "</image>", "<slice>", "</slice>")] == \
        [248077, 248078, 248079, 248080]
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "问"}]}],
                                         tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>user\n<|image_pad|>\n问<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    batch = processor(text=[text], images=[Image.new("RGB", (1000, 1400), "white")], return_tensors="pt")
    assert int((batch["input_ids"] == 248056).sum()) == 447
    assert json.loads((tiny / "tiny.json").read_text())["digest"] == recipe_digest(MINICPM_V_4_6_RECIPE)
    assert tiny_answerer("minicpmv4_6", tiny.parent) == tiny
