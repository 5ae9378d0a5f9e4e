"""Thinking checkpoints (issue 22.5): the answer after </think> is scored, an unclosed block is an
empty answer that the report counts, and a Thinking model gets a thinking-sized generation budget.
No model loads: a scripted engine stands in."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from patentqa.config import apply_overrides, compose
from patentqa.data.corpus import Document, Question
from patentqa.data.prompts import PromptConfig
from patentqa.eval.runs import Scored
from patentqa.eval.sections import failures
from patentqa.infer.engine import Reply, Sampling
from patentqa.infer.pipeline import AnswerContext, PipelineSettings, answer_chunk, think_answer


# ---------------------------------------------------------------- extraction

@pytest.mark.parametrize("reply, expected", [
    ("<think>\n部件3在左边。\n</think>\n\n在12的下方", ("在12的下方", "closed")),       # closed
    ("部件3在左边。\n</think>\n\n在12的下方", ("在12的下方", "closed")),                 # the prompt opened it
    ("<think>\n部件3在左边，部件12在", ("", "unclosed")),                              # cut mid-reasoning
    ("<think>a<think>b</think>c</think>  \n 电动机 \n", ("电动机", "closed")),         # nested: the last one
    ("  <think>\n\n</think>\n\n  电动机\n", ("电动机", "closed")),                    # empty block, whitespace
    ("<think>想完了</think>", ("", "closed")),                                         # closed, nothing after
    ("在12的下方", ("在12的下方", None)),                                              # no block: unchanged
    (" 在12的下方\n", (" 在12的下方\n", None)),                                        # ... byte for byte
])
def test_think_answer(reply: str, expected: tuple[str, str | None]) -> None:
    assert think_answer(reply) == expected


def test_a_block_the_prompt_opened_is_unclosed_only_when_cut_at_the_limit() -> None:
    cut = Reply("部件3在左边，部件12在", truncated=True)
    assert think_answer(cut, opened=True) == ("", "unclosed")
    assert think_answer(cut) == ("部件3在左边，部件12在", None)           # an Instruct model's cut answer
    done = Reply("在12的下方", truncated=False)                          # a tuned checkpoint answers directly
    assert think_answer(done, opened=True) == ("在12的下方", None)
    assert think_answer("在12的下方", opened=True) == ("在12的下方", None)  # unknown: taken as the answer


# ---------------------------------------------------------------- the pipeline reads every reply through it

class ScriptedEngine:
    """Answers each call's prompts from a list of scripted replies, in order; records the calls."""

    name = "scripted"

    def __init__(self, *calls: list[str]) -> None:
        self.calls, self.seen = list(calls), []

    def generate(self, prompts: list[Any], sampling: Sampling, adapter: str | None = None) -> list[str]:
        self.seen.append((len(prompts), sampling.max_new_tokens))
        return self.calls.pop(0)

    def close(self) -> None:
        pass


class NoPages:
    def context_pages(self, question: Question, document: Document) -> list[int]:
        return []


def _chunk(n: int) -> tuple[list[Question], AnswerContext]:
    questions = [Question(id=f"q{i}", question=f"部件{i}是什么？", document="CN1.pdf", answer="电动机")
                 for i in range(n)]
    config = PromptConfig(name="seed_b", max_pixels={"with_context": 50176, "figure_only": 100352})
    documents = {"CN1.pdf": Document("CN1.pdf", Path("CN1.pdf"), "0" * 64, 1)}
    return questions, AnswerContext(config, documents, {}, NoPages())


def test_the_pipeline_scores_the_answer_after_think_and_keeps_the_raw_reply() -> None:
    replies = ["<think>\n看图。\n</think>\n\n电动机。", "<think>\n看图，部件1", "电动机", "看图，部件3"]
    replies = [Reply(r, truncated=i == 3) for i, r in enumerate(replies)]
    questions, ctx = _chunk(4)
    settings = PipelineSettings(style_pass=False, max_new_tokens=99, thinking=True)
    records = answer_chunk(questions, ctx, ScriptedEngine(replies), settings)
    assert [r["raw_answer"] for r in records] == list(map(str, replies))
    assert [r["prediction"] for r in records] == ["电动机", "", "电动机", ""]
    assert [r["think"] for r in records] == ["closed", "unclosed", None, "unclosed"]


def test_the_style_pass_reads_its_reply_the_same_way_and_skips_unclosed_answers() -> None:
    questions, ctx = _chunk(3)
    engine = ScriptedEngine(["<think>a</think>电动机和齿轮", "<think>想", "<think>b</think>弹簧"],
                            ["<think>改写</think>电动机", "<think>改写到一半"])   # two: q1 is not rewritten
    settings = PipelineSettings(style_pass=True, max_new_tokens=99, style_max_new_tokens=77, thinking=True)
    records = answer_chunk(questions, ctx, engine, settings)
    assert engine.seen == [(3, 99), (2, 77)]
    # q2's rewrite never finished: its answer stands
    assert [r["prediction"] for r in records] == ["电动机", "", "弹簧"]


def test_the_llm_router_reads_the_verdict_after_think_and_falls_back_to_the_rules_when_unclosed() -> None:
    """The seed's classifier says Y (figure only) or N; a Thinking model's verdict is after </think>, and 8 tokens
    rarely get there: an unfinished think decides nothing (the 'y' in 'thinking about it' must not count)."""
    questions = [Question(id=f"q{i}", question=f"在文件中第1页的示意图中，部件{i}是什么？", document="CN1.pdf",
                          answer="电动机") for i in range(2)]  # figure_other: the rules give with_context
    config = PromptConfig(name="seed_b", max_pixels={"with_context": 50176, "figure_only": 100352})
    documents = {"CN1.pdf": Document("CN1.pdf", Path("CN1.pdf"), "0" * 64, 1)}
    ctx = AnswerContext(config, documents, {("CN1.pdf", 1): Path("p1.png")}, NoPages())
    classifier = [Reply("<think>看图</think>Y", truncated=False), Reply("<think>嗯，用户问的是 y 轴", truncated=True)]
    engine = ScriptedEngine(classifier, ["电动机", "电动机"])
    settings = PipelineSettings(router="llm", style_pass=False, max_new_tokens=99, thinking=True)
    records = answer_chunk(questions, ctx, engine, settings)
    assert [r["form"] for r in records] == ["figure_only", "with_context"]
    assert [r["classifier"] for r in records] == list(map(str, classifier))


def test_an_instruct_model_s_records_are_unchanged() -> None:
    questions, ctx = _chunk(2)
    records = answer_chunk(questions, ctx, ScriptedEngine(["电动机", "答案：弹簧。"]),
                           PipelineSettings(style_pass=False))
    assert [(r["raw_answer"], r["prediction"], r["think"]) for r in records] == [
        ("电动机", "电动机", None), ("答案：弹簧。", "弹簧", None)]


# ---------------------------------------------------------------- the report's failure table

def test_failure_table_counts_unclosed_thinks() -> None:
    thinks = {"a": "closed", "b": "unclosed", "c": "unclosed", "d": None}
    rows = {i: {"id": i, "prediction": "" if t == "unclosed" else "电动机", "answer": "电动机",
                "empty": t == "unclosed", "scores": {}} for i, t in thinks.items()}
    records = {i: {"raw_answer": "x", "truncated": t == "unclosed", "think": t} for i, t in thinks.items()}
    counts = failures(Scored("test", "checkpoint-1", rows, records, {}), raw_limit=64, style_limit=32)
    assert counts["unclosed_think"] == 2 and counts["empty"] == 2 and counts["hit_max_tokens"] == 2
    no_think = {i: {**r, "think": None} for i, r in records.items()}
    assert failures(Scored("test", "checkpoint-1", rows, no_think, {}), 64, 32)["unclosed_think"] is None


# ---------------------------------------------------------------- generation budgets

@pytest.mark.parametrize("infer, plain", [("transformers", 64), ("vllm", 768), ("openai", 768)])
def test_a_thinking_model_gets_the_thinking_budget(infer: str, plain: int) -> None:
    thinking = compose(["+exp=lora_r8", "model=qwen3_vl_32b_thinking", f"infer={infer}"])
    instruct = compose(["+exp=lora_r8", "model=qwen3_vl_32b", f"infer={infer}"])
    budget = thinking.thinking_max_new_tokens
    assert budget == 16384 and thinking.model.thinking is True and "thinking" not in instruct.model
    assert thinking.infer.max_new_tokens == budget and instruct.infer.max_new_tokens == plain
    assert thinking.pipeline.style_max_new_tokens == budget and instruct.pipeline.style_max_new_tokens == 32
    assert PipelineSettings.from_cfg(thinking.pipeline, thinking.infer, thinking.model) == PipelineSettings(
        router="rules", style_pass=True, cleanup=True, chunk_size=32, max_new_tokens=budget,
        style_max_new_tokens=budget, thinking=True)
    assert not PipelineSettings.from_cfg(instruct.pipeline, instruct.infer, instruct.model).thinking


@pytest.mark.parametrize("model", ["qwen3_vl_2b_thinking", "qwen3_vl_4b_thinking", "qwen3_vl_8b_thinking"])
def test_every_thinking_model_is_flagged(model: str) -> None:
    cfg = compose(["+exp=lora_r8", f"model={model}"])
    assert cfg.model.thinking is True and cfg.infer.max_new_tokens == cfg.thinking_max_new_tokens


def test_explicit_budgets_win_and_the_one_knob_moves_every_default() -> None:
    assert compose(["model=qwen3_vl_32b_thinking", "infer.max_new_tokens=100"]).infer.max_new_tokens == 100
    cfg = compose(["model=qwen3_vl_32b_thinking", "thinking_max_new_tokens=4096"])
    assert cfg.infer.max_new_tokens == cfg.pipeline.style_max_new_tokens == 4096


def test_a_stored_thinking_run_swapping_its_engine_keeps_the_thinking_budget() -> None:
    stored = compose(["+exp=lora_r8", "model=qwen3_vl_32b_thinking"])
    OmegaConf.resolve(stored)  # a run's config.yaml: numbers, no interpolations
    assert apply_overrides(stored, ["infer=vllm"]).infer.max_new_tokens == 16384
    stored = compose(["+exp=lora_r8", "model=qwen3_vl_32b"])
    OmegaConf.resolve(stored)
    assert apply_overrides(stored, ["infer=vllm"]).infer.max_new_tokens == 768
