"""Model families: one module a family holds all that the stages need to know about it (``Family``).

    qwen2_5_vl   Qwen2.5-VL (the seed's)        28 px a visual token, full attention
    qwen2_vl     Qwen2-VL (write-up 001's)      28 px a visual token, full attention
    qwen3_vl     Qwen3-VL (+ Thinking)          32 px a visual token, full attention
    qwen3_5      Qwen3.5 / 3.6 / 3.8            32 px a visual token, hybrid: Gated DeltaNet + full attention
    minicpmv4_6  MiniCPM-V 4.6 (write-up 003's) slices of 448 px, 64 or 256 tokens each; Qwen3.5's hybrid decoder

``family(model_type)`` / ``family_of(cfg.model)`` is how a stage asks; nothing outside these modules compares
model-type strings. This package imports nothing of patentqa at import time (the tiny builders load lazily),
so every stage and ``patentqa.config`` may use it. Adding a family is one module and one line below.
"""
from __future__ import annotations

from typing import Any

from patentqa.models import minicpm_v, qwen2_5_vl, qwen2_vl, qwen3_5, qwen3_vl
from patentqa.models.family import CacheSpec, Family, full_attention_cache

FAMILIES: dict[str, Family] = {module.FAMILY.model_type: module.FAMILY for module in (qwen2_5_vl, qwen2_vl, qwen3_vl,
                                                                                     qwen3_5, minicpm_v)}

__all__ = ["CacheSpec", "FAMILIES", "Family", "chat_template_kwargs", "family", "family_of", "full_attention_cache"]


class UnknownFamily(ValueError):
    """A model type no family module knows."""


def family(model_type: str) -> Family:
    """The family of a swift / transformers ``model_type``; a clear error for one patentqa does not know."""
    try:
        return FAMILIES[str(model_type)]
    except KeyError:
        raise UnknownFamily(f"model_type {model_type!r} is not a model family patentqa knows "
                            f"({', '.join(FAMILIES)}); a family is one module in patentqa/models/") from None


def family_of(model_cfg: Any) -> Family:
    """The family of a ``model`` config (its ``model_type``; Qwen2.5-VL when it names none)."""
    model_type = model_cfg.get("model_type") if hasattr(model_cfg, "get") else getattr(model_cfg, "model_type", None)
    return family(str(model_type or "qwen2_5_vl"))


def chat_template_kwargs(model_cfg: Any) -> dict[str, Any]:
    """The chat-template arguments of a ``model`` config (``model.thinking`` for a thinking template)."""
    thinking = model_cfg.get("thinking") if hasattr(model_cfg, "get") else getattr(model_cfg, "thinking", None)
    return family_of(model_cfg).template_kwargs(bool(thinking))
