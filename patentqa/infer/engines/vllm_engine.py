"""vLLM offline engine (GPU machines, ``pip install -e .[vllm]``); ``vllm`` is imported lazily.

One ``vllm.LLM`` holds the base model; each LoRA checkpoint is served without merging as a
``LoRARequest(name, int_id, path)`` (``enable_lora=True``). ``max_lora_rank`` must cover every
adapter's rank and be one of vLLM's allowed values, so the configured rank is rounded up to
that set and each adapter's ``adapter_config.json`` rank is checked against it.

Requests come from ``to_vllm_request``: the chat-templated prompt string plus the images,
already resized to their training budget by ``load_images``; ``mm_processor_kwargs=
{"do_resize": False}`` keeps vLLM's processor from resizing them again (ms-swift's own vLLM
mode does the same). The request and ``LLM`` arguments are built by pure functions
(``build_requests``, ``llm_kwargs``, ``lora_rank``) so tests check them without vLLM.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patentqa.data.prompts import Prompt, to_vllm_request
from patentqa.infer.engine import Sampling
from patentqa.infer.engines.transformers_engine import cfg_get

VLLM_MISSING = "the vllm engine needs the vllm extra: pip install -e .[vllm] (GPU machines only)"
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


def llm_kwargs(infer_cfg: Any, model_cfg: Any, max_lora_rank: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for these configs (``max_lora_rank`` rounded up)."""
    kwargs: dict[str, Any] = {
        "model": str(model_cfg.path),
        "dtype": str(cfg_get(model_cfg, "torch_dtype", "auto")),
        "tensor_parallel_size": int(cfg_get(infer_cfg, "tensor_parallel_size", 1)),
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


def sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    """``SamplingParams`` arguments: temperature 0 is greedy in vLLM; no repetition penalty."""
    return {"temperature": float(sampling.temperature), "max_tokens": int(sampling.max_new_tokens)}


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

        kwargs = llm_kwargs(infer_cfg, model_cfg, int(cfg_get(infer_cfg, "max_lora_rank", 64)))
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

    def generate(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None) -> list[str]:
        """One answer per prompt, in order; vLLM schedules and batches the requests itself."""
        if not prompts:
            return []
        from vllm import SamplingParams

        outputs = self.llm.generate(build_requests(prompts, self.processor, self.factor),
                                    SamplingParams(**sampling_kwargs(sampling)),
                                    lora_request=self._lora_request(adapter), use_tqdm=False)
        return [output.outputs[0].text for output in outputs]

    def close(self) -> None:
        self.llm = None
