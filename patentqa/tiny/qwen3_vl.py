"""The tiny Qwen3-VL answerer (32 px a visual token, Qwen3-VL's chat template: no default system prompt)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from patentqa.tiny.build import VISION_COMMON, VOCAB_SIZE, build_family, cached
from patentqa.tiny.tokenizer import QWEN3_VL_CHAT_TEMPLATE

QWEN3_VL_RECIPE: dict[str, Any] = {
    "name": "qwen3_vl",
    "text_config": {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 32,  # vLLM's CPU attention rejects 16; mrope_section sums to head_dim / 2
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.1,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 6, 6],
                            "mrope_interleaved": True},
    },
    "vision_config": {
        **VISION_COMMON,
        "patch_size": 16,  # × merge 2: 32 px a visual token, as the released checkpoints
        "num_position_embeddings": 256,
        "deepstack_visual_indexes": [0],
    },
    # the released preprocessor_config.json: 16 px patches, merge 2, mean/std 0.5, 64 to 16384 visual tokens
    "image_processor": {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
                        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                        "size": {"shortest_edge": 65536, "longest_edge": 16777216}},
    "chat_template": QWEN3_VL_CHAT_TEMPLATE,
}


def tiny_qwen3_vl(cache_dir: str | Path) -> Path:
    """Directory of a tiny random Qwen3-VL (``cache_dir/qwen3_vl``), built if missing."""
    return cached(Path(cache_dir) / "qwen3_vl", QWEN3_VL_RECIPE, _build_qwen3_vl)


def _build_qwen3_vl(out: Path, recipe: dict[str, Any]) -> None:
    from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)

    build_family(out, recipe, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
                 Qwen3VLVideoProcessor)
