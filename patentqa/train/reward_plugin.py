"""The swift plugin of GRPO's reward: ``swift rlhf --external_plugins THIS_FILE --reward_funcs patentqa``.

swift imports this file in each rank; it registers ``MetricReward``, which scores completions with
``patentqa.train.reward.RewardSpec`` (the run's metric, settings from ``PATENTQA_REWARD``). It is apart from
reward.py because importing swift takes seconds: only swift's own processes pay for it.
"""
from __future__ import annotations

from typing import Any

from swift.rewards import ORM, orms

from patentqa.train.reward import NAME, RewardSpec


class MetricReward(ORM):
    """swift's reward function: ``__call__(completions, solution, round, options, ...)`` → one float each."""

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        self.args = args
        self.spec = RewardSpec.from_env()

    def __call__(self, completions: list[str], solution: list[str], **kwargs: Any) -> list[float]:
        return self.spec.rewards(completions, solution, kwargs.get("round"), kwargs.get("options"))


orms[NAME] = MetricReward
