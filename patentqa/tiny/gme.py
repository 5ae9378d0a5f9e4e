"""The tiny Qwen2-VL embedder, shaped like GME and saved in the published GME checkpoints' key layout."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from patentqa.tiny.build import TEXT_COMMON, build_family, cached

QWEN2_VL_GME_RECIPE: dict[str, Any] = {
    "name": "qwen2_vl_gme",
    "text_config": TEXT_COMMON,
    "vision_config": {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": 64,  # output width = text hidden size
        "mlp_ratio": 2,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}


def tiny_qwen2_vl_embedder(cache_dir: str | Path) -> Path:
    """Directory of a tiny random Qwen2-VL shaped like GME (``cache_dir/qwen2_vl_gme``)."""
    return cached(Path(cache_dir) / "qwen2_vl_gme", QWEN2_VL_GME_RECIPE, _build_qwen2_vl)


# The key layout of the published GME checkpoints (Alibaba-NLP/gme-Qwen2-VL-{2B,7B}-Instruct): they
# were saved by transformers < 4.52's Qwen2VLForConditionalGeneration, whose modules are ``visual``
# (tower + merger), ``model`` (the text decoder) and ``lm_head``; the repos' own gme_inference.py
# reads them as ``self.base.visual`` and ``self.base.model.embed_tokens`` (read in the copy at
# TIGER-AI-Lab/VLM2Vec src/model/vlm_backbone/gme/gme_inference.py). vLLM 0.32's qwen2_vl.py maps
# the same prefixes ("mapping for original checkpoint"), and transformers 5 renames them on load
# (conversion_mapping.py, Qwen2VLForConditionalGeneration: ^visual -> model.visual, ^model ->
# model.language_model). The tiny embedder is written in this layout, so it loads by GME's path.
GME_LAYOUT = {"visual.": "model.visual.", "model.": "model.language_model.", "lm_head.": "lm_head."}


def gme_layout(keys: list[str]) -> dict[str, str]:
    """``{transformers 5 key: GME key}`` for a Qwen2-VL state dict saved in either layout."""
    renamed = {}
    for key in keys:
        for ours, theirs in GME_LAYOUT.items():
            if key.startswith(theirs):
                renamed[key] = ours + key[len(theirs):]
                break
        else:
            renamed[key] = key
    return renamed


def _to_gme_layout(out: Path) -> None:
    """Rewrite ``out/model.safetensors`` in GME's key layout (a no-op when transformers saved it so)."""
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    weights = load_file(path)
    renamed = gme_layout(list(weights))
    if any(k != v for k, v in renamed.items()):
        save_file({renamed[k]: v for k, v in weights.items()}, path, metadata={"format": "pt"})
    unknown = sorted(k for k in renamed.values() if not k.startswith(tuple(GME_LAYOUT)))
    if unknown:
        raise RuntimeError(f"tiny embedder: keys outside GME's layout: {unknown[:5]}")


def _build_qwen2_vl(out: Path, recipe: dict[str, Any]) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    build_family(out, recipe, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor)
    _to_gme_layout(out)
