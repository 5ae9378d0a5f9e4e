"""The engine interface: a batch of structured prompts (+ sampling, + optional LoRA adapter) → texts.

Implementations (config group ``infer``): ``transformers`` (in-process, peft adapter swap),
``vllm`` (offline ``vllm.LLM``, lazily imported) and ``openai`` (any OpenAI-compatible server).
Every engine renders prompts through the one prompt builder's renderers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from patentqa.data.prompts import Prompt


@dataclass(frozen=True)
class Sampling:
    """Generation settings; temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0


class Engine(Protocol):
    """Answers prompts; engines batch internally as their backend prefers."""

    name: str

    def generate(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None) -> list[str]:
        """One text per prompt, in order; ``adapter`` is a LoRA checkpoint dir (None = base model)."""
        ...

    def close(self) -> None:
        """Release the model / client."""
        ...


def make_engine(infer_cfg: Any, model_cfg: Any) -> Engine:
    """The engine named by ``infer_cfg.name``."""
    name = infer_cfg.name
    if name == "transformers":
        from patentqa.infer.engines.transformers_engine import TransformersEngine

        return TransformersEngine.from_config(infer_cfg, model_cfg)
    if name == "vllm":
        from patentqa.infer.engines.vllm_engine import VllmEngine

        return VllmEngine.from_config(infer_cfg, model_cfg)
    if name == "openai":
        from patentqa.infer.engines.openai_engine import OpenAIEngine

        return OpenAIEngine.from_config(infer_cfg, model_cfg)
    raise ValueError(f"unknown infer.name {name!r} (expected transformers, vllm or openai)")
