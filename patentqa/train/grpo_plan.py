"""GRPO's part of the dry-run plan: rollouts per step and memory per GPU, before anything loads.

On top of the SFT plan (``patentqa.train.plan``: ZeRO-3 model states of the policy), one GPU of a
GRPO run holds:

- **reference**: nothing more for LoRA (the reference is the same partitioned weights with the adapter
  off, which is why GRPO starts from the merged SFT model); a second partitioned bf16 copy for full
  fine-tuning;
- **rollouts by transformers** (``use_vllm: false``): the KV cache of the rank's completions while they
  are generated (its ``per_device_train_batch_size`` sequences of the longest prompt + ``max_completion_length``,
  bf16), and float32 logits of policy and reference over the completions for the loss;
- **rollouts by vLLM in colocate mode** (``use_vllm: true, vllm_mode: colocate``): the share of the GPU vLLM
  reserves (``vllm_gpu_memory_utilization``: its weights at ``vllm_tensor_parallel_size`` and its KV cache),
  released while the policy trains when ``sleep_level`` ≥ 1: the peak is then the larger phase, not the sum.

- **activations** of the loss forward/backward, with gradient checkpointing (swift's default): each layer's bf16
  input for every token of the rank's completions (longest prompt + ``max_completion_length``), an estimate that
  leaves out one layer's recomputed internals; the margin left covers those.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from patentqa.config import world_size
from patentqa.infer.capacity import GIB, Shape, gpu_memory, kv_bytes_per_token
from patentqa.models import family_of
from patentqa.train.plan import Plan, model_config


@dataclass
class GrpoPlan:
    completions_per_step: int
    generations: int
    prompts_per_step: int | None
    gpu_gib: float | None
    gpu_source: str
    memory_gib: dict[str, float]
    asleep: list[str] = field(default_factory=list)  # parts released while the policy trains (vLLM, sleep_level)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def format(self) -> str:
        prompts = f"{self.prompts_per_step:,}" if self.prompts_per_step else "not a whole number of"
        lines = [f"GRPO: {self.completions_per_step:,} completions a step = {prompts} question(s) × "
                 f"{self.generations} generations (train.num_generations)"]
        parts = " + ".join(f"{name} {gib:.1f}" for name, gib in self.memory_gib.items())
        when = " at the peak (vLLM asleep while the policy trains)" if self.asleep else ""
        room = (f"; {self.gpu_gib - self.peak_gib:.1f} GiB left of {self.gpu_gib:.1f} ({self.gpu_source}){when}"
                if self.gpu_gib else f" ({self.gpu_source}: no GPU size to compare with)")
        lines.append(f"  memory per GPU (GiB): {parts} = {self.peak_gib:.1f}{room}")
        lines += [f"  note:  {note}" for note in self.notes]
        lines += [f"  ERROR: {error}" for error in self.errors]
        return "\n".join(lines)

    @property
    def peak_gib(self) -> float:
        """The most one GPU holds at once: everything, or with vLLM asleep the larger of its two phases (rollouts:
        what is not training memory; training: what is not vLLM's)."""
        if not self.asleep:
            return sum(self.memory_gib.values())
        training = {"logits (policy + reference, fp32)", "checkpointed activations (bf16)"}
        rollouts = sum(v for k, v in self.memory_gib.items() if k not in training)
        return max(rollouts, sum(v for k, v in self.memory_gib.items() if k not in self.asleep))


def make_grpo_plan(cfg: DictConfig, plan: Plan) -> GrpoPlan:
    """GRPO's rollouts and memory for ``cfg``, on top of the policy's plan ``plan``."""
    train = cfg.train
    per_device, generations = int(train.per_device_train_batch_size), int(train.num_generations)
    completions = per_device * int(train.gradient_accumulation_steps) * world_size(cfg)
    errors = []
    if completions % generations:
        errors.append(f"{completions} completions a step (per device × accumulation × ranks) is not a multiple of "
                      f"num_generations {generations}: swift refuses it")
    config, _ = model_config(cfg.model)
    total = plan.params["total"]
    shape = Shape.from_config(config, total, cache=family_of(cfg.model).cache_spec(config))
    state = shape.cache.linear_state_bytes(1, 2)  # a hybrid model's fixed linear-attention state a sequence
    gpus = max(plan.gpus, 1)
    memory = {"policy (ZeRO-3 model states)": plan.memory_gib["this_run"]}
    notes, asleep = [], []
    if str(train.get("tuner_type", "lora")) == "full":
        memory["reference (bf16, partitioned)"] = 2 * total / gpus / GIB
    else:
        notes.append("reference: the policy's own weights with the LoRA adapter off (no second copy)")
    prompt = max((t["max_tokens"] for t in plan.tokens.values()), default=0)
    completion = int(train.max_completion_length)
    memory["logits (policy + reference, fp32)"] = 2 * per_device * completion * shape.vocab * 4 / GIB
    memory["checkpointed activations (bf16)"] = per_device * (prompt + completion) * shape.hidden * shape.layers * 2 / GIB
    gpu_gib, source = gpu_memory(cfg)
    if train.get("use_vllm"):
        mode = str(train.get("vllm_mode") or "server")
        if mode == "colocate":
            tp = int(train.get("vllm_tensor_parallel_size") or 1)
            utilization = float(train.get("vllm_gpu_memory_utilization") or 0.9)
            reserved = utilization * (gpu_gib or 0.0)
            weights = 2 * total / tp / GIB
            memory[f"vLLM colocate ({utilization:g} of the GPU)"] = reserved
            if train.get("sleep_level"):
                asleep.append(f"vLLM colocate ({utilization:g} of the GPU)")
            kv = kv_bytes_per_token(shape, tp, 2)
            if state:
                notes.append(f"a rollout also holds {state / tp / 2 ** 20:,.0f} MiB of linear-attention state a GPU "
                             "(hybrid model; vLLM keeps it in its KV blocks)")
            notes.append(f"vLLM colocate: weights {weights:.1f} GiB a GPU at TP {tp}, KV cache "
                         f"{max(reserved - weights, 0):.1f} GiB = {int(max(reserved - weights, 0) * GIB / kv):,} tokens "
                         f"(a rollout needs {prompt + completion:,})" + ("; released while training (sleep_level "
                                                                        f"{train.get('sleep_level')})" if train.get("sleep_level") else ""))
            if reserved and weights > reserved:
                errors.append(f"vLLM's weights ({weights:.1f} GiB at TP {tp}) exceed its share ({reserved:.1f} GiB): "
                              "raise vllm_gpu_memory_utilization or vllm_tensor_parallel_size")
        else:
            notes.append(f"vLLM rollouts in {mode} mode: a separate server (swift rollout) on its own GPUs")
    else:
        kv = kv_bytes_per_token(shape, 1, 2)
        memory["rollout KV cache (transformers)"] = per_device * ((prompt + completion) * kv + state) / GIB
        notes.append("rollouts by transformers generate under ZeRO-3 gather every layer for every token: slow "
                     "on 32B; the node's preset (+exp=grpo_r8) uses vLLM in colocate mode")
    result = GrpoPlan(completions, generations, completions // generations if not completions % generations else None,
                      gpu_gib, source, memory, asleep, notes, errors)
    if gpu_gib and result.peak_gib > gpu_gib:
        errors.append(f"{result.peak_gib:.1f} GiB a GPU at the peak is more than its {gpu_gib:.1f}: lower "
                      "per_device_train_batch_size (raise gradient_accumulation_steps to keep the step)")
    return result
