"""The dry-run plan for Qwen2.5-VL-32B on the meta device: no weights, DeepSpeed's own estimator."""
from __future__ import annotations

import pytest

from patentqa.config import compose
from patentqa.train.plan import make_plan

LAYERS, HIDDEN, KV, INTER, RANK = 64, 5120, 8 * 128, 27648, 8  # Qwen2.5-VL-32B text config


@pytest.fixture(scope="module")
def plan(lora_r8_cfg):
    return make_plan(lora_r8_cfg)


def test_32b_parameters_per_tower(plan) -> None:
    p = plan.params
    assert 33.0e9 < p["total"] < 34.0e9  # published: 33.5 B
    assert p["lm_head"] == 152064 * HIDDEN  # untied output head
    assert 0.6e9 < p["vision tower"] < 0.75e9
    assert p["total"] == p["vision tower"] + p["language model"] + p["lm_head"]


def test_lora_r8_all_linear_resolves_to_the_language_model_only(plan) -> None:
    per_layer = RANK * ((HIDDEN + HIDDEN) * 2 + (HIDDEN + KV) * 2 + (HIDDEN + INTER) * 3)  # q,o + k,v + gate,up,down
    assert plan.trainable == LAYERS * per_layer == 67_108_864
    (modules,) = plan.trainable_modules
    assert modules.startswith(f"{LAYERS * 7} modules") and "model.language_model" in modules
    assert "visual" not in modules and "lm_head" not in modules  # freeze_vit / freeze_aligner, as swift resolves


def test_zero3_memory_and_prompt_tokens(plan) -> None:
    m = plan.memory_gib
    assert plan.gpus == 8
    full = (18 * plan.params["total"] / 8 + 4 * 152064 * HIDDEN) / 1024 ** 3  # DeepSpeed's formula, no offload
    assert m["full_finetune"] == pytest.approx(full, rel=1e-6)
    assert 9 < m["this_run"] < 13 < 80  # fits an 80 GB GPU with room for activations
    assert set(plan.tokens) == {"with_context", "figure_only", "document"}
    assert plan.tokens["figure_only"]["image_tokens"] > plan.tokens["with_context"]["image_tokens"]  # bigger budget
    assert plan.tokens["with_context"]["images"] == 3 and plan.tokens["with_context"]["tokens"] > 5000
    text = plan.format()
    for line in ("params:", "trainable:", "memory:", "tokens:", "~300 GB"):
        assert line in text


def test_full_fine_tuning_with_cpu_offload_shows_gpu_and_cpu_memory(tmp_path) -> None:
    from conftest import cache_root

    cfg = compose(["+exp=lora_r8", "train=full", "launcher=8gpu_offload", f"paths.root={tmp_path}",
                   f"paths.cache_dir={cache_root()}"])
    offload = make_plan(cfg)
    p = offload.params
    assert offload.trainable == p["language model"] + p["lm_head"]  # vision tower (and aligner) frozen
    m = offload.memory_gib
    assert m["this_run"] < 5 < 73 < m["full_finetune"] + 1  # offloaded: a few GiB of GPU memory instead of ~73
    assert 18 * offload.trainable / 1024 ** 3 < m["cpu_per_node"]  # fp32 master weights, moments and grads on CPU
    text = offload.format()
    assert "with CPU offload" in text and "GiB of CPU RAM per node" in text
