"""The tiny Qwen3.5 answerer: hybrid text decoder (Gated DeltaNet "linear attention" layers alternating with full
attention), Qwen3-VL's vision tower and processor (32 px a visual token), Qwen3.5's own vocabulary and special ids
(248044-248076) and its thinking chat template.

The shapes follow what vLLM's CPU path takes (FACTS.md, "Checked 2026-12-07"): linear-attention key and value head
dims 64 (its GDN kernel takes 64 or 128, equal), full-attention head_dim 64 with a quarter of it rotary
(``partial_rotary_factor`` 0.25: mrope_section [3, 3, 2] sums to 8). Saved in float32 (``swift sft`` on CPU needs it;
vLLM's CPU GDN casts to bfloat16), so ``A_log`` and ``linear_attn.norm.weight`` are float32 as in the released
bf16 checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from patentqa.tiny.build import VISION_COMMON, _save_common, _seeded_model, cached
from patentqa.tiny.tokenizer import (BPE_VOCAB_SIZE, QWEN3_5_ADDED_TOKENS, QWEN3_5_CHAT_TEMPLATE, QWEN3_8_CHAT_TEMPLATE,
                                     QWEN3_5_FIRST_ADDED_ID, QWEN3_5_PRETOKENIZE_REGEX, _first_filler,
                                     build_qwen3_5_tokenizer)

QWEN3_5_VOCAB_SIZE = 248320  # embedding rows: >= the tokenizer's 248077, a multiple of 64, as the released ones
ENDOFTEXT, IM_END = 248044, 248046

QWEN3_5_RECIPE: dict[str, Any] = {
    "name": "qwen3_5",
    "text_config": {
        "vocab_size": QWEN3_5_VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        # two layers, hybrid: layer i is full attention iff (i + 1) % 2 == 0: linear, full. With four (linear,
        # full, linear, full) +exp=smoke learned less: test char F1 +0.210 (0.080 -> 0.290); with two +0.269
        # (0.066 -> 0.335), and it trains faster
        "num_hidden_layers": 2,
        "full_attention_interval": 2,
        "num_attention_heads": 2,  # q_proj is 2x wide (an output gate), as the released ones
        "num_key_value_heads": 1,
        "head_dim": 64,  # vLLM's CPU attention takes it
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 64,  # vLLM's CPU GDN kernel: 64 or 128, key == value ("Unexpected head dim size")
        "linear_value_head_dim": 64,
        "linear_num_key_heads": 1,
        "linear_num_value_heads": 2,
        "mamba_ssm_dtype": "float32",  # the recurrent state's dtype, as the released configs (vLLM's cache reads it)
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.1,
        "bos_token_id": ENDOFTEXT,
        "eos_token_id": IM_END,
        "pad_token_id": ENDOFTEXT,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                            "mrope_section": [3, 3, 2], "mrope_interleaved": True},
    },
    "vision_config": {
        **VISION_COMMON,
        "patch_size": 16,  # × merge 2: 32 px a visual token, as the released checkpoints
        "num_position_embeddings": 256,
    },
    "token_ids": {"image_token_id": 248056, "video_token_id": 248057, "vision_start_token_id": 248053,
                  "vision_end_token_id": 248054, "tie_word_embeddings": False},
    # Qwen3-VL's preprocessor_config.json: 16 px patches, merge 2, mean/std 0.5, 64 to 16384 visual tokens
    "image_processor": {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
                        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                        "size": {"shortest_edge": 65536, "longest_edge": 16777216}},
    # the tokenizer and template are this family's own, so the digest covers them here
    "tokenizer": {"added": [list(t) for t in QWEN3_5_ADDED_TOKENS], "first_added_id": QWEN3_5_FIRST_ADDED_ID,
                  "pretokenize_regex": QWEN3_5_PRETOKENIZE_REGEX, "bpe_vocab_size": BPE_VOCAB_SIZE},
    "chat_template": QWEN3_5_CHAT_TEMPLATE,
}

FP32_PARAMS = ("linear_attn.A_log", "linear_attn.norm.weight")  # float32 in the released bf16 checkpoints too


# the same tiny model with Qwen3.8-27B's chat template (ms-swift's template qwen3_8: the reasoning-effort line)
QWEN3_8_RECIPE: dict[str, Any] = {**QWEN3_5_RECIPE, "name": "qwen3_8", "chat_template": QWEN3_8_CHAT_TEMPLATE}


def tiny_qwen3_8(cache_dir: str | Path) -> Path:
    """Directory of the tiny Qwen3.5 with Qwen3.8's chat template (``cache_dir/qwen3_8``), built if missing."""
    return cached(Path(cache_dir) / "qwen3_8", QWEN3_8_RECIPE, _build_qwen3_5)


def tiny_qwen3_5(cache_dir: str | Path) -> Path:
    """Directory of a tiny random Qwen3.5 (``cache_dir/qwen3_5``), built if missing."""
    return cached(Path(cache_dir) / "qwen3_5", QWEN3_5_RECIPE, _build_qwen3_5)


def _build_qwen3_5(out: Path, recipe: dict[str, Any]) -> None:
    import torch
    from transformers import (Qwen2VLImageProcessor, Qwen3_5Config, Qwen3_5ForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    tokenizer = build_qwen3_5_tokenizer()
    config = Qwen3_5Config(text_config=dict(recipe["text_config"]), vision_config=dict(recipe["vision_config"]),
                           **recipe["token_ids"])
    config.architectures = [Qwen3_5ForConditionalGeneration.__name__]
    model = _seeded_model(Qwen3_5ForConditionalGeneration, config, _first_filler(tokenizer),
                          first_special_id=QWEN3_5_FIRST_ADDED_ID)
    for name, param in model.named_parameters():
        if name.endswith(FP32_PARAMS) and param.dtype != torch.float32:
            raise RuntimeError(f"tiny Qwen3.5: {name} is {param.dtype}, the released checkpoints keep it float32")
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(**recipe["image_processor"]),
                                 tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(),
                                 chat_template=recipe["chat_template"])
    _save_common(out, model, processor, endoftext_id=ENDOFTEXT, im_end_id=IM_END)
