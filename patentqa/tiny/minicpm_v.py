"""The tiny MiniCPM-V 4.6 answerer: a SigLIP-style vision tower with the window-attention merger, MiniCPM's merger
MLP, and a hybrid Qwen3.5 text decoder (``qwen3_5_text``: one Gated DeltaNet layer, one full-attention layer) on
Qwen3.5's vocabulary and special ids, plus MiniCPM's slice tokens.

The recipe follows what runs here (FACTS.md, "seen: a tiny MiniCPM-V 4.6 goes through everything here"):
``insert_layer_id`` 0, below the tower's depth of 2 (at or past the depth the window merger never runs);
linear-attention head dims 64 (vLLM's CPU GDN kernel); vLLM serves it in bfloat16 only. The tokenizer is the tiny
Qwen3.5 one with ``<image> </image> <slice> </slice> <image_id> </image_id>`` appended after Qwen3.5's added
tokens (248077-248082; the tiny's choice: the processor finds them by name) and named on the tokenizer with
``image_token=<|image_pad|>`` etc., as MiniCPM's processor reads them. Its chat template is Qwen3.5's thinking
template with an image written ``<|image_pad|>\\n``, as ms-swift's ``minicpmv4_6`` template writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from patentqa.tiny.build import _save_common, _seeded_model, cached
from patentqa.tiny.qwen3_5 import ENDOFTEXT, IM_END, QWEN3_5_RECIPE, QWEN3_5_VOCAB_SIZE
from patentqa.tiny.tokenizer import (QWEN3_5_CHAT_TEMPLATE, QWEN3_5_FIRST_ADDED_ID, QWEN3_5_TOKENIZER_LEN,
                                     _first_filler, build_qwen3_5_tokenizer)

MINICPM_TOKENS = ("<image>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>")
# the names MiniCPM-V 4.6's processor reads off its tokenizer
NAMED_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "image_start_token": "<image>",
                "image_end_token": "</image>", "slice_start_token": "<slice>", "slice_end_token": "</slice>",
                "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>"}
_QWEN_IMAGE = "'<|vision_start|><|image_pad|><|vision_end|>'"
_QWEN_VIDEO = "'<|vision_start|><|video_pad|><|vision_end|>'"


def _minicpm_template(qwen3_5: str) -> str:
    """Qwen3.5's chat template with images and videos written as swift's minicpmv4_6 template writes them."""
    for old in (_QWEN_IMAGE, _QWEN_VIDEO):
        if qwen3_5.count(old) != 1:
            raise ValueError(f"Qwen3.5's template changed; this edit no longer applies: {old}")
    return qwen3_5.replace(_QWEN_IMAGE, "'<|image_pad|>\\n'").replace(_QWEN_VIDEO, "'<|video_pad|>\\n'")


MINICPM_V_CHAT_TEMPLATE = _minicpm_template(QWEN3_5_CHAT_TEMPLATE)

MINICPM_V_4_6_RECIPE: dict[str, Any] = {
    "name": "minicpm_v_4_6",
    "text_config": {
        **{k: v for k, v in QWEN3_5_RECIPE["text_config"].items() if k != "rope_parameters"},
        "model_type": "qwen3_5_text",
        "head_dim": 32,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
        "tie_word_embeddings": False,
    },
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "patch_size": 14, "image_size": 980},
    "insert_layer_id": 0,  # below the tower's depth (2), or the window merger never runs
    "token_ids": {"image_token_id": 248056, "video_token_id": 248057},
    "tokens": list(MINICPM_TOKENS),
    "chat_template": MINICPM_V_CHAT_TEMPLATE,
}


def tiny_minicpm_v_4_6(cache_dir: str | Path) -> Path:
    """Directory of a tiny random MiniCPM-V 4.6 (``cache_dir/minicpm_v_4_6``), built if missing."""
    return cached(Path(cache_dir) / "minicpm_v_4_6", MINICPM_V_4_6_RECIPE, _build_minicpm_v_4_6)


def build_minicpm_tokenizer() -> Any:
    """The tiny Qwen3.5 tokenizer with MiniCPM's slice tokens after Qwen3.5's, named as MiniCPM's processor reads them."""
    from tokenizers import AddedToken

    tokenizer = build_qwen3_5_tokenizer()
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in MINICPM_TOKENS], special_tokens=True)
    for i, token in enumerate(MINICPM_TOKENS):
        if tokenizer.convert_tokens_to_ids(token) != QWEN3_5_TOKENIZER_LEN + i:
            raise RuntimeError(f"tiny MiniCPM-V tokenizer: {token} is not id {QWEN3_5_TOKENIZER_LEN + i}")
    tokenizer._set_model_specific_special_tokens(NAMED_TOKENS)
    tokenizer.chat_template = MINICPM_V_CHAT_TEMPLATE
    return tokenizer


def _build_minicpm_v_4_6(out: Path, recipe: dict[str, Any]) -> None:
    from transformers import (MiniCPMV4_6Config, MiniCPMV4_6ForConditionalGeneration, MiniCPMV4_6ImageProcessor,
                              MiniCPMV4_6Processor, MiniCPMV4_6VideoProcessor)

    tokenizer = build_minicpm_tokenizer()
    config = MiniCPMV4_6Config(text_config=dict(recipe["text_config"]), vision_config=dict(recipe["vision_config"]),
                               insert_layer_id=recipe["insert_layer_id"], tie_word_embeddings=False,
                               **recipe["token_ids"])
    config.architectures = [MiniCPMV4_6ForConditionalGeneration.__name__]
    assert config.text_config.vocab_size == QWEN3_5_VOCAB_SIZE >= len(tokenizer)
    model = _seeded_model(MiniCPMV4_6ForConditionalGeneration, config, _first_filler(tokenizer),
                          first_special_id=QWEN3_5_FIRST_ADDED_ID)
    processor = MiniCPMV4_6Processor(image_processor=MiniCPMV4_6ImageProcessor(),
                                     video_processor=MiniCPMV4_6VideoProcessor(), tokenizer=tokenizer,
                                     chat_template=recipe["chat_template"])
    _save_common(out, model, processor, endoftext_id=ENDOFTEXT, im_end_id=IM_END)
