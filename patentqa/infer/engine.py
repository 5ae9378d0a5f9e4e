"""The engine interface: a batch of structured prompts (+ sampling, + optional LoRA adapter) → texts.

Implementations live in ``patentqa.infer.engines`` (config group ``infer``): ``transformers``
(in-process, peft adapter swap), ``vllm`` (offline ``vllm.LLM``, lazily imported) and ``openai``
(any OpenAI-compatible server); ``patentqa.infer.engines.make_engine`` picks one. They import
this module; it imports none of them. Every engine renders prompts through the one prompt
builder's renderers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from patentqa.config import cfg_get
from patentqa.data.prompts import Prompt
from patentqa.hub import model_dir  # noqa: F401 - the one model resolver, re-exported for the engines


def image_factor(model_cfg: Any) -> int:
    """Pixels a side of one visual token of ``model_cfg``'s family (``model.image_factor``: 28 Qwen2.5-VL, 32
    Qwen3-VL): images are resized to multiples of it. Required: a wrong factor resizes every page wrongly."""
    factor = cfg_get(model_cfg, "image_factor", None)
    if factor is None:
        raise ValueError("the model config has no image_factor (28 for Qwen2.5-VL, 32 for Qwen3-VL; conf/model/*.yaml)")
    return int(factor)


@dataclass(frozen=True)
class Sampling:
    """Generation settings; temperature 0 means greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0


class Reply(str):
    """A generated text that also says whether generation stopped at ``max_new_tokens``.

    Engines return these from ``generate``; they are plain strings everywhere else, and the
    pipeline records ``truncated`` so reports can count answers cut at the limit.
    """

    truncated: bool | None

    def __new__(cls, text: str, truncated: bool | None = None) -> Reply:
        reply = super().__new__(cls, text)
        reply.truncated = truncated
        return reply


@dataclass(frozen=True)
class Trace:
    """One greedy answer, token by token: ids and each position's top-k (token id, log-probability).

    Engines that can (transformers, vllm) return these from ``generate_traced`` for the parity check.
    """

    text: str
    tokens: list[int]
    top: list[list[tuple[int, float]]]  # per generated position, best first

    def margin(self, position: int) -> float | None:
        """Log-probability gap between the best and the second-best token at ``position``."""
        if position >= len(self.top) or len(self.top[position]) < 2:
            return None
        return self.top[position][0][1] - self.top[position][1][1]


class Engine(Protocol):
    """Answers prompts; engines batch internally as their backend prefers."""

    name: str

    def generate(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None) -> list[str]:
        """One text per prompt, in order; ``adapter`` is a LoRA checkpoint dir (None = base model)."""
        ...

    def close(self) -> None:
        """Release the model / client."""
        ...
