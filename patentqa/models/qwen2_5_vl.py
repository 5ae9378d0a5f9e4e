"""Qwen2.5-VL (the seed's family): 14 px patches merged 2×2, 28 px a visual token; every layer full attention.

Its swift loader reads a row-less image budget as ``MAX_PIXELS``; its chat template adds the default system
prompt "You are a helpful assistant."; no think block.
"""
from __future__ import annotations

from patentqa.models.family import Family, full_attention_cache

FAMILY = Family(
    name="Qwen2.5-VL",
    model_type="qwen2_5_vl",
    templates=("qwen2_5_vl",),
    config_class="Qwen2_5_VLConfig",
    model_class="Qwen2_5_VLForConditionalGeneration",
    processor_class="Qwen2_5_VLProcessor",
    image_factor=28,
    budget_unit="pixels",
    tiny="patentqa.tiny.qwen2_5_vl:tiny_qwen2_5_vl",
    cache=full_attention_cache,
)
