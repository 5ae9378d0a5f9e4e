"""What a stage may ask of a model family: ``Family`` (one instance a family module) and ``CacheSpec``.

A family is the set of checkpoints one swift model type loads (Qwen2.5-VL, Qwen3-VL, Qwen3.5 / 3.6 / 3.8):
the same config and model classes, the same image processor rule, the same chat-template conventions and
the same inference cache layout. Stages never compare model-type strings: they call ``family(model_type)``
(or ``family_of(cfg.model)``) and ask it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class CacheSpec:
    """What vLLM keeps per sequence, from the published architecture: a KV cache on the full-attention
    layers (``kv_heads`` × ``head_dim`` for K and V, per token), and for a hybrid model a fixed state on each
    linear-attention (Gated DeltaNet) layer: a conv state of ``conv_kernel - 1`` columns over the q, k and v
    channels (the model's dtype) and a recurrent state of value heads × key dim × value dim
    (``state_bytes``: float32 on the Qwen3.5 checkpoints, their ``mamba_ssm_dtype``)."""

    full_layers: int
    kv_heads: int
    head_dim: int
    linear_layers: int = 0
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_key_dim: int = 0
    linear_value_dim: int = 0
    conv_kernel: int = 0
    state_bytes: int | None = None  # the recurrent state's dtype bytes; None: the model's dtype (vLLM's 'auto')

    @property
    def hybrid(self) -> bool:
        return self.linear_layers > 0

    def kv_heads_per_gpu(self, tp: int) -> int:
        """KV heads one GPU of a ``tp``-way replica holds (vLLM replicates them when ``tp`` exceeds them)."""
        return max(1, self.kv_heads // tp)

    def kv_bytes_per_token_layer(self, tp: int, cache_bytes: int) -> int:
        """K and V of one token on one full-attention layer, on one GPU of a ``tp``-way replica."""
        return 2 * self.kv_heads_per_gpu(tp) * self.head_dim * cache_bytes

    def kv_bytes_per_token(self, tp: int, cache_bytes: int) -> int:
        """K and V of one token over every full-attention layer (a hybrid model's linear layers keep none)."""
        return self.full_layers * self.kv_bytes_per_token_layer(tp, cache_bytes)

    def conv_state_bytes(self, tp: int, dtype_bytes: int) -> int:
        """One linear-attention layer's conv state of one sequence, on one GPU."""
        channels = self.linear_key_heads * self.linear_key_dim * 2 + self.linear_value_heads * self.linear_value_dim
        return channels // tp * (self.conv_kernel - 1) * dtype_bytes

    def recurrent_state_bytes(self, tp: int, dtype_bytes: int) -> int:
        """One linear-attention layer's recurrent state of one sequence, on one GPU (``state_bytes`` a value)."""
        return (self.linear_value_heads // tp * self.linear_key_dim * self.linear_value_dim
                * (self.state_bytes or dtype_bytes))

    def linear_state_bytes_layer(self, tp: int, dtype_bytes: int) -> int:
        return self.conv_state_bytes(tp, dtype_bytes) + self.recurrent_state_bytes(tp, dtype_bytes)

    def linear_state_bytes(self, tp: int, dtype_bytes: int) -> int:
        """The fixed state one sequence holds over all linear-attention layers, on one GPU."""
        return self.linear_layers * self.linear_state_bytes_layer(tp, dtype_bytes)


@dataclass(frozen=True)
class Family:
    """All that the stages need to know about one model family (module doc)."""

    name: str                      # as people write it: "Qwen2.5-VL"
    model_type: str                # transformers' and ms-swift's model type
    templates: tuple[str, ...]     # ms-swift templates its checkpoints use (the first is the default)
    config_class: str              # transformers classes
    model_class: str
    processor_class: str
    image_factor: int              # pixels a side of one visual token (patch × spatial merge)
    budget_unit: str               # how swift's loader reads a row-less image budget: "pixels" (MAX_PIXELS) or
                                   # "tokens" (IMAGE_MAX_TOKEN_NUM; it converts a MAX_PIXELS at its own factor)
    tiny: str                      # "module:function" building the tiny test checkpoint of this family
    tiny_templates: tuple[tuple[str, str], ...] = ()  # (swift template, "module:function"): a tiny checkpoint
                                                      # whose chat template is that template's (Qwen3.8's)
    cache: Callable[[Any], CacheSpec] | None = None  # transformers config -> CacheSpec
    thinking_template: bool = False  # its chat template always writes a think block (empty with thinking off)
    reasoning_effort: bool = False   # a template of it adds a reasoning-effort sentence to the system prompt
    vllm_tower_lora: bool = False    # vLLM serves vision-tower LoRA (it drops it: vllm #26991, #28186)
    linear_attention_lora: tuple[str, ...] = ()  # LoRA-able projections of its linear-attention layers,
                                                 # which vLLM must apply as peft does (a node checks it)
    notes: tuple[str, ...] = ()

    def budget_env(self, max_tokens: int, min_tokens: int, max_pixels: int) -> dict[str, str]:
        """swift's image budget for a row that carries none, in the units its loader reads."""
        if self.budget_unit == "tokens":
            return {"IMAGE_MAX_TOKEN_NUM": str(int(max_tokens)), "IMAGE_MIN_TOKEN_NUM": str(int(min_tokens))}
        return {"MAX_PIXELS": str(int(max_pixels))}

    def processor_budget(self, tokens: int) -> int:
        """Pixels of an image budget of ``tokens`` visual tokens (each ``image_factor`` px square)."""
        return int(tokens) * self.image_factor ** 2

    def template_kwargs(self, thinking: bool) -> dict[str, Any]:
        """Chat-template arguments every renderer passes (HF, vLLM, a vLLM server; swift gets ``--enable_thinking``):
        a thinking template is told ``enable_thinking`` explicitly, since its own default (on) differs from
        swift's (off); other templates take none."""
        return {"enable_thinking": bool(thinking)} if self.thinking_template else {}

    def build_tiny(self, cache_dir: str | Path, template: str | None = None) -> Path:
        """The tiny test checkpoint of this family (with ``template``'s chat template where the family has one),
        built into ``cache_dir`` if missing."""
        module, function = dict(self.tiny_templates).get(str(template), self.tiny).split(":")
        return getattr(importlib.import_module(module), function)(cache_dir)

    def cache_spec(self, config: Any) -> CacheSpec:
        """The inference cache of a checkpoint of this family (its transformers config)."""
        assert self.cache is not None, f"family {self.name} names no cache spec"
        return self.cache(config)


def full_attention_cache(config: Any) -> CacheSpec:
    """Every decoder layer full attention (Qwen2.5-VL, Qwen3-VL)."""
    text = getattr(config, "text_config", config)
    heads = int(text.num_attention_heads)
    return CacheSpec(full_layers=int(text.num_hidden_layers),
                     kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
                     head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads))
