"""GRPO's reward is the metric: planted completions get exactly what ``patentqa.eval.score`` gives the predictions
the answer pipeline would have written for them; the plugin registers with swift as ``swift rlhf`` loads it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from patentqa.eval.metrics import resolve_weights
from patentqa.eval.score import score_file
from patentqa.train import swift_args
from patentqa.train.reward import ENV, NAME, RewardSpec

OPTIONS = ["A. 位于左侧", "B. 位于右侧", "C. 位于上方", "D. 位于下方"]
# (completion, gold, round, options, the prediction answer_chunk writes for that reply: planted by hand)
PLANTED = [
    ("位于部件2的左侧", "位于部件2的左侧", "b", None, "位于部件2的左侧"),
    ("答案：位于部件2的左侧。", "位于部件2的左侧", "b", None, "位于部件2的左侧"),
    ("**部件3**", "部件3位于部件2的右侧", "b", None, "部件3"),
    ("", "用于固定底座", "b", None, ""),
    ("<think>看图，部件3在上面</think>位于上方", "位于部件4的上方", "b", None, "位于上方"),
    ("<think>还没想完", "位于部件4的上方", "b", None, ""),
    ("B", "B", "a", OPTIONS, "B"),
    ("答案是C", "B", "a", OPTIONS, "C"),
    ("A或B", "B", "a", OPTIONS, ""),
]


def spec(**overrides) -> RewardSpec:
    return RewardSpec(**{"metric": "composite", "weights": resolve_weights("default"), **overrides})


def test_rewards_equal_the_scores_of_the_predictions_the_pipeline_writes(tmp_path: Path) -> None:
    completions, gold, rounds, options, predictions = map(list, zip(*PLANTED))
    reward = spec()
    assert reward.predictions(completions, [json.dumps(o or []) for o in options]) == predictions
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "prediction": p, "answer": g, "round": r}, ensure_ascii=False)
                            + "\n" for i, (p, g, r) in enumerate(zip(predictions, gold, rounds))), encoding="utf-8")
    score_file(path, ["char_f1", "char_rouge_l"], "default", by=None, resamples=10)
    scored = [json.loads(line)["scores"]["composite"] for line in (tmp_path / "predictions.scores.jsonl").read_text().splitlines()]
    got = reward.rewards(completions, gold, rounds, [json.dumps(o or []) for o in options])
    assert got == scored
    assert got[0] == got[1] == 1.0 and got[3] == got[5] == 0.0 and got[6] == 1.0 and got[7] == got[8] == 0.0
    assert 0.0 < got[2] < 1.0 and 0.0 < got[4] < 1.0


def test_a_single_metric_and_the_format_term() -> None:
    completions = ["位于部件2的左侧", "答案：位于部件2的左侧\n因为……", "位于部件2的左侧" * 10]
    gold = ["位于部件2的左侧"] * 3
    plain = spec(metric="char_f1").rewards(completions, gold)
    assert plain[0] == 1.0
    shaped = spec(metric="char_f1", format_weight=0.25, max_answer_chars=20).rewards(completions, gold)
    assert shaped == [plain[0] + 0.25, plain[1], plain[2]]  # a chain and an over-long reply get no format term


def test_the_plugin_registers_with_swift_and_reads_its_settings_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from swift.rewards import orms

    monkeypatch.delitem(orms, NAME, raising=False)
    from swift.utils.utils import import_external_file

    monkeypatch.setattr(sys, "path", list(sys.path))  # swift puts the plugin's dir first on the path
    monkeypatch.delenv(ENV, raising=False)
    import_external_file(str(swift_args.REWARD_PLUGIN))  # what `swift rlhf --external_plugins PLUGIN` does in a rank
    with pytest.raises(RuntimeError, match=ENV):
        orms[NAME](args=None)
    for key, value in spec(metric="char_f1").to_env().items():
        monkeypatch.setenv(key, value)
    reward = orms[NAME](args=None)
    completions, gold, rounds, options, _ = map(list, zip(*PLANTED))
    got = reward(completions, solution=gold, round=rounds, options=[json.dumps(o or []) for o in options],
                 trainer_state=None, images=[[]] * len(gold))
    assert got == spec(metric="char_f1").rewards(completions, gold, rounds, [json.dumps(o or []) for o in options])
