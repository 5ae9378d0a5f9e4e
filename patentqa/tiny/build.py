"""What every tiny model shares: the recipe digest, the atomic cached build, seeded weights, the save.

A built model's directory holds a ``tiny.json`` marker with the digest of its recipe (plus the
tokenizer's corpus, tokens and template); a changed recipe rebuilds. Builds go to a temp dir next to
the target and are moved into place with ``os.replace``, so a killed build never leaves a half model.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from patentqa.tiny.tokenizer import (BPE_VOCAB_SIZE, CHAT_TEMPLATE, EXTRA_TOKENS, FIRST_SPECIAL_ID, SPECIAL_TOKENS,
                                     _first_filler, build_tokenizer, tokenizer_corpus)

RECIPE_VERSION = 3
SEED = 0
VOCAB_SIZE = 151680  # embedding rows: >= TOKENIZER_LEN, a multiple of 64
OUTPUT_ROW_STD = 0.5  # lm_head init; the default 0.02 caps logits near 0.2 and LoRA cannot learn

# The text decoder of the tiny Qwen2.5-VL and the tiny GME embedder (Qwen3-VL's recipe has its own).
TEXT_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 32 (vLLM's CPU attention rejects 16); mrope_section sums to head_dim / 2
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "max_window_layers": 2,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.1,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "pad_token_id": 151643,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
}
VISION_COMMON: dict[str, Any] = {  # both families' tiny vision tower; each adds its patch size and extras
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
_TOKEN_IDS: dict[str, Any] = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}


def recipe_digest(recipe: dict[str, Any]) -> str:
    """Hash of everything that shapes a tiny model; the marker stores it."""
    blob = json.dumps(
        {
            "version": RECIPE_VERSION,
            "seed": SEED,
            "recipe": recipe,
            "corpus": tokenizer_corpus(),
            "chat_template": CHAT_TEMPLATE,
            "tokens": [SPECIAL_TOKENS, EXTRA_TOKENS, BPE_VOCAB_SIZE, OUTPUT_ROW_STD],
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _is_current(target: Path, digest: str) -> bool:
    marker = target / "tiny.json"
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("digest") == digest
    except (OSError, ValueError):
        return False


def cached(target: Path, recipe: dict[str, Any], build: Callable[[Path, dict[str, Any]], None]) -> Path:
    """Return ``target`` if its marker matches the recipe, else build it atomically."""
    digest = recipe_digest(recipe)
    if _is_current(target, digest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        build(tmp, recipe)
        marker = {"recipe_version": RECIPE_VERSION, "digest": digest, "name": recipe["name"], "seed": SEED}
        (tmp / "tiny.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if target.exists():  # stale recipe: move the old copy aside first
            if _is_current(target, digest):  # a concurrent build won the race
                return target
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "model")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_current(target, digest):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _save_common(out: Path, model: Any, processor: Any, endoftext_id: int = 151643, im_end_id: int = 151645) -> None:
    """Weights, processor and a greedy ``generation_config.json`` (eos: <|im_end|> and <|endoftext|> of the family)."""
    from transformers import GenerationConfig

    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    GenerationConfig(
        bos_token_id=endoftext_id,
        eos_token_id=[im_end_id, endoftext_id],
        pad_token_id=endoftext_id,
        do_sample=False,
    ).save_pretrained(out)


def _seeded_model(model_cls: Any, config: Any, first_filler: int, first_special_id: int = FIRST_SPECIAL_ID) -> Any:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = model_cls(config)
        with torch.no_grad():
            # Output rows at a trained model's scale (|row| ~ 4, logits up to ~30), so
            # LoRA on the layers below can make confident predictions through a frozen head.
            model.get_output_embeddings().weight.normal_(0.0, OUTPUT_ROW_STD)
            # Filler ids never occur in text: zero rows, logit 0, never a greedy pick once
            # a real token scores above 0.
            for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
                matrix[first_filler:first_special_id] = 0.0
    return model.eval()


def _image_processor(cls: Any) -> Any:
    # pixel budget of the released checkpoints' preprocessor_config.json (min/max_pixels)
    return cls(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384})


def build_family(out: Path, recipe: dict[str, Any], config_cls: Any, model_cls: Any, processor_cls: Any,
                 video_processor_cls: Any = None) -> None:
    """One tiny model of a Qwen-VL family: config from ``recipe``, seeded weights, processor, and the family's
    chat template (``recipe["chat_template"]``, else Qwen2.5-VL's)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    chat_template = recipe.get("chat_template", CHAT_TEMPLATE)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = chat_template
    config = config_cls(text_config=dict(recipe["text_config"]), vision_config=dict(recipe["vision_config"]),
                        **_TOKEN_IDS)
    config.architectures = [model_cls.__name__]
    model = _seeded_model(model_cls, config, _first_filler(tokenizer))
    image_processor = (Qwen2VLImageProcessor(**recipe["image_processor"]) if "image_processor" in recipe
                       else _image_processor(Qwen2VLImageProcessor))
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              video_processor=(video_processor_cls or Qwen2VLVideoProcessor)(),
                              chat_template=chat_template)
    _save_common(out, model, processor)
