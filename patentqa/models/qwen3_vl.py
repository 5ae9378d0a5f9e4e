"""Qwen3-VL: 16 px patches merged 2×2, 32 px a visual token; every layer full attention.

ms-swift's loader budgets images in tokens (``IMAGE_MAX_TOKEN_NUM``; an old ``MAX_PIXELS`` is converted at 32 px a
token); the ``qwen3_vl`` template adds no default system prompt; a *-Thinking checkpoint replies
``<think>…</think>answer`` (``model.thinking``).
"""
from __future__ import annotations

from patentqa.models.family import Family, full_attention_cache

FAMILY = Family(
    name="Qwen3-VL",
    model_type="qwen3_vl",
    templates=("qwen3_vl",),
    config_class="Qwen3VLConfig",
    model_class="Qwen3VLForConditionalGeneration",
    processor_class="Qwen3VLProcessor",
    image_factor=32,
    budget_unit="tokens",
    tiny="patentqa.tiny.qwen3_vl:tiny_qwen3_vl",
    cache=full_attention_cache,
)
