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
from typing import Any, Callable, Mapping


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
    budget_unit: str               # how swift's loader reads a row-less image budget: "pixels" (MAX_PIXELS),
                                   # "tokens" (IMAGE_MAX_TOKEN_NUM; it converts a MAX_PIXELS at its own factor) or
                                   # "slices" (MAX_SLICE_NUMS + DOWNSAMPLE_MODE, one setting a run: MiniCPM-V)
    tiny: str                      # "module:function" building the tiny test checkpoint of this family
    tiny_templates: tuple[tuple[str, str], ...] = ()  # (swift template, "module:function"): a tiny checkpoint
                                                      # whose chat template is that template's (Qwen3.8's)
    cache: Callable[[Any], CacheSpec] | None = None  # transformers config -> CacheSpec
    thinking_template: bool = False  # its chat template always writes a think block (empty with thinking off)
    reasoning_effort: bool = False   # a template of it adds a reasoning-effort sentence to the system prompt
    vllm_tower_lora: bool = False    # vLLM serves vision-tower LoRA (it drops it: vllm #26991, #28186)
    linear_attention_lora: tuple[str, ...] = ()  # LoRA-able projections of its linear-attention layers,
                                                 # which vLLM must apply as peft does (a node checks it)
    vision_modules: tuple[str, ...] = ("visual",)  # the image side's modules under ``model.model`` (tower, merger)
    # A slicing family (MiniCPM-V) budgets an image by its processor's slice settings, not its pixels:
    # slice_rule(page (height, width) by form, token budget by form) -> settings; slice_tokens(h, w, settings) ->
    # the visual tokens one image gets. None: tokens are pixels / image_factor² (Qwen).
    slice_rule: Callable[[Mapping[str, tuple[int, int]], Mapping[str, int]], dict[str, Any]] | None = None
    slice_tokens: Callable[[int, int, Mapping[str, Any]], int] | None = None
    notes: tuple[str, ...] = ()

    @property
    def slicing(self) -> bool:
        return self.slice_rule is not None

    def image_tokens(self, height: int, width: int, settings: Mapping[str, Any] | None = None) -> int:
        """Visual tokens of one image of ``height`` × ``width`` px as the pipeline sends it (already at its budget)."""
        if self.slice_tokens is not None:
            return self.slice_tokens(height, width, settings or {})
        return height * width // self.image_factor ** 2

    def slice_settings(self, pages: Mapping[str, tuple[int, int]], budgets: Mapping[str, int]) -> dict[str, Any]:
        """The processor's slice settings for a run whose forms send pages of ``pages`` size under ``budgets``
        visual tokens ({} for a family that budgets by pixels)."""
        return dict(self.slice_rule(pages, budgets)) if self.slice_rule is not None else {}

    def image_kwargs(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What the image processor is told at inference (the HF processor's ``images_kwargs``, vLLM's
        ``mm_processor_kwargs``): a Qwen image comes at its budget already, so no second resize; a slicing
        family's processor must resize into its slices (``do_resize=False`` crashes MiniCPM's), with the run's
        slice settings."""
        return dict(settings or {}) if self.slicing else {"do_resize": False}

    def generate_kwargs(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Arguments the HF model's forward needs beside the processor's output (MiniCPM's ``downsample_mode``:
        its merger must merge as the processor counted)."""
        mode = (settings or {}).get("downsample_mode")
        return {"downsample_mode": str(mode)} if self.slicing and mode else {}

    def budget_env(self, max_tokens: int, min_tokens: int, max_pixels: int,
                   settings: Mapping[str, Any] | None = None) -> dict[str, str]:
        """swift's image budget for a row that carries none, in the units its loader reads (a slicing family's
        template reads its slice settings for the whole run: ``MAX_SLICE_NUMS``, ``DOWNSAMPLE_MODE``)."""
        if self.budget_unit == "slices":
            return {key.upper(): str(value) for key, value in (settings or {}).items()}
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
