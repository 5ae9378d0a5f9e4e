"""GRPO's reward: each sampled completion scored by the run's own metric (``patentqa.eval.metrics``).

A completion is read exactly as the answer pipeline reads a reply without its style pass
(``patentqa.infer.pipeline.reply_prediction``: think block dropped, a chain cut to its "答案：" line,
round-A letters parsed, cleanup), then scored by ``score_items`` with the run's metric settings:
``composite`` (or any registered metric) for open answers, accuracy for round-A letters. An optional
format term adds ``format_weight`` when the reply is one short line with no chain.

``swift rlhf --external_plugins reward_plugin.py --reward_funcs patentqa`` imports the plugin in each rank, which
registers ``MetricReward`` over this spec; the settings come from ``PATENTQA_REWARD`` (JSON, written by
``patentqa.train.grpo.reward_spec``). This module imports no swift: ``python -m patentqa.train`` loads it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from patentqa.eval.metrics import COMPOSITE, score_items
from patentqa.infer.pipeline import reply_prediction, think_answer

ENV = "PATENTQA_REWARD"
NAME = "patentqa"  # the --reward_funcs name this plugin registers


@dataclass(frozen=True)
class RewardSpec:
    """What the reward scores with: the metric (``eval.select_by``), the composite weights, how replies are read."""

    metric: str = COMPOSITE
    weights: dict[str, float] = field(default_factory=dict)
    thinking: bool = False          # model.thinking: the prompt opened <think>
    cot: bool = False               # prompt.target=cot: the answer is the chain's "答案：" line
    cleanup: bool = True            # pipeline.cleanup
    format_weight: float = 0.0      # + weight when the reply is one line, no chain, at most max_answer_chars
    max_answer_chars: int = 64

    def to_env(self) -> dict[str, str]:
        return {ENV: json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RewardSpec:
        raw = (environ if environ is not None else os.environ).get(ENV)
        if not raw:
            raise RuntimeError(f"{ENV} is not set: the reward plugin runs under `python -m patentqa.train` "
                               "(train=grpo), which sets it from the run's eval and reward settings")
        return cls(**json.loads(raw))

    def predictions(self, completions: Sequence[str], options: Sequence[Any] | None = None) -> list[str]:
        """Each completion read as the pipeline reads a reply."""
        options = options or [None] * len(completions)
        return [reply_prediction(text, _options(opts), thinking=self.thinking, cot=self.cot, clean=self.cleanup)
                for text, opts in zip(completions, options)]

    def format_ok(self, completion: str) -> bool:
        """One line after the think block, no "答案：" chain, at most ``max_answer_chars`` characters."""
        answer, think = think_answer(completion, self.thinking)
        text = answer.strip()
        return think != "unclosed" and bool(text) and "\n" not in text and "答案" not in text \
            and len(text) <= self.max_answer_chars

    def rewards(self, completions: Sequence[str], solutions: Sequence[str], rounds: Sequence[str | None] | None = None,
                options: Sequence[Any] | None = None) -> list[float]:
        """One reward per completion: the metric of its prediction against its solution (+ the format term)."""
        rounds = rounds or [None] * len(completions)
        items = [{"prediction": p, "answer": str(s), "round": r}
                 for p, s, r in zip(self.predictions(completions, options), solutions, rounds)]
        names = [] if self.metric == COMPOSITE else [self.metric]
        scored = score_items(items, names, self.weights or None, keep=())
        values = [float(row["scores"].get(self.metric, row["scores"].get(COMPOSITE, 0.0))) for row in scored]
        if self.format_weight:
            values = [v + self.format_weight * self.format_ok(c) for v, c in zip(values, completions)]
        return values


def _options(value: Any) -> list[str] | None:
    """A row's options column: a JSON list (GRPO rows store it as text), a list, or nothing."""
    if isinstance(value, str):
        value = json.loads(value) if value else None
    return list(value) if value else None
