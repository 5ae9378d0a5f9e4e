"""Qwen2-VL (the first write-up's family, ``../seeds/001``): 14 px patches merged 2×2, 28 px a visual token, as
Qwen2.5-VL; every layer full attention; a vision tower without window attention (``embed_dim`` × ``mlp_ratio``).

Its swift loader reads a row-less image budget as ``MAX_PIXELS``; its chat template adds the default system
prompt "You are a helpful assistant."; no think block.
"""
from __future__ import annotations

from patentqa.models.family import Family, full_attention_cache

FAMILY = Family(
    name="Qwen2-VL",
    model_type="qwen2_vl",
    templates=("qwen2_vl",),
    config_class="Qwen2VLConfig",
    model_class="Qwen2VLForConditionalGeneration",
    processor_class="Qwen2VLProcessor",
    image_factor=28,
    budget_unit="pixels",
    tiny="patentqa.tiny.qwen2_vl:tiny_qwen2_vl",
    cache=full_attention_cache,
)
