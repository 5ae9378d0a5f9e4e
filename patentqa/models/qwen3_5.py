"""Qwen3.5 / 3.6 / 3.8 (one swift model type, ``qwen3_5``): a hybrid decoder and Qwen3-VL's vision side.

Layer i is full attention iff (i + 1) % ``full_attention_interval`` == 0 (transformers writes it out as
``layer_types``); the other layers are Gated DeltaNet linear attention, which keep a fixed state per sequence
(a conv state and a recurrent state, the latter in ``mamba_ssm_dtype``: float32 on the released checkpoints)
instead of a KV cache. Images: 16 px patches merged 2×2, 32 px a visual token, budgeted in tokens by swift
(its loader is Qwen3-VL's). The chat templates are thinking templates: with thinking off the assistant turn
starts with an empty ``<think>\\n\\n</think>\\n\\n``; Qwen3.8's ``qwen3_8`` template adds a reasoning-effort
sentence to the system prompt when thinking is on. swift's ``all-linear`` LoRA reaches the linear-attention
projections below as well as q/k/v/o and the MLP.
"""
from __future__ import annotations

from typing import Any

from patentqa.models.family import CacheSpec, Family

LINEAR_ATTENTION_PROJECTIONS = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def hybrid_cache(config: Any) -> CacheSpec:
    """KV on the full-attention layers, a fixed state on the linear-attention ones (``layer_types``)."""
    text = getattr(config, "text_config", config)
    types = list(text.layer_types)
    state = getattr(text, "mamba_ssm_dtype", None)
    return CacheSpec(full_layers=types.count("full_attention"), kv_heads=int(text.num_key_value_heads),
                     head_dim=int(text.head_dim), linear_layers=types.count("linear_attention"),
                     linear_key_heads=int(text.linear_num_key_heads),
                     linear_value_heads=int(text.linear_num_value_heads),
                     linear_key_dim=int(text.linear_key_head_dim), linear_value_dim=int(text.linear_value_head_dim),
                     conv_kernel=int(text.linear_conv_kernel_dim),
                     state_bytes=DTYPE_BYTES[str(state)] if state else None)


FAMILY = Family(
    name="Qwen3.5",
    model_type="qwen3_5",
    templates=("qwen3_5", "qwen3_8"),
    config_class="Qwen3_5Config",
    model_class="Qwen3_5ForConditionalGeneration",
    processor_class="Qwen3VLProcessor",
    image_factor=32,
    budget_unit="tokens",
    tiny="patentqa.tiny.qwen3_5:tiny_qwen3_5",
    tiny_templates=(("qwen3_8", "patentqa.tiny.qwen3_5:tiny_qwen3_8"),),
    cache=hybrid_cache,
    thinking_template=True,
    reasoning_effort=True,
    linear_attention_lora=LINEAR_ATTENTION_PROJECTIONS,
)
