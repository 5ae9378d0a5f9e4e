"""The linear-attention LoRA probe's verdict (patentqa/infer/lora_probe.py) and the vLLM engine's refusal after a
failed probe; the probe itself runs for real in tests/e2e/test_qwen3_5_e2e.py and make gpu-check."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from patentqa.data.prompts import Prompt
from patentqa.infer.engine import Sampling, Trace
from patentqa.infer.lora_probe import (LinearAttentionLoraError, check_linear_attention_lora, judge, record_path,
                                       vllm_identity)

PROMPTS = [Prompt(parts=("q1",), form="figure_only"), Prompt(parts=("q2",), form="document")]
QWEN3_5 = OmegaConf.create({"model_type": "qwen3_5"})


def trace(tokens: list[int], margin: float = 2.0) -> Trace:
    return Trace(text=" ".join(map(str, tokens)), tokens=tokens, top=[[(t, 0.0), (0, -margin)] for t in tokens])


def verdict(base: list[list[int]], peft: list[list[int]], vllm: list[Trace], peft_margin: float = 2.0):
    ours = {"base": [trace(t) for t in base], "linear_attention": [trace(t, peft_margin) for t in peft]}
    return judge(ours, {"linear_attention": vllm}, PROMPTS, Sampling(max_new_tokens=4), ["in_proj_qkv"])


def test_vllm_must_equal_peft_and_the_adapter_must_matter() -> None:
    base, peft = [[1, 2], [3, 4]], [[1, 5], [3, 4]]
    assert verdict(base, peft, [trace([1, 5]), trace([3, 4])]).passed
    hard = verdict(base, peft, [trace([1, 2]), trace([3, 4])])  # vLLM answered as the base model: LoRA dropped
    assert not hard.passed and "vLLM equals peft on 1/2" in hard.detail
    idle = verdict(base, base, [trace([1, 2]), trace([3, 4])])  # an adapter that changes nothing proves nothing
    assert not idle.passed and "changes nothing" in idle.detail
    tie = verdict(base, peft, [trace([1, 5], 0.2), trace([3, 9], 0.1)], peft_margin=0.2)
    assert tie.passed and tie.near_ties == 1  # a flip where both engines' top-2 gap is under 0.25 is tolerated
    assert "(1 near-tie(s), transformers' top-2 margins 0.2)" in tie.detail  # the margin, printed
    undecided = verdict(base, peft, [trace([1, 5]), trace([3, 9], 1.5)], peft_margin=0.0)
    assert undecided.passed and undecided.near_ties == 1  # peft tied (gap 0): vLLM may be sure of either token
    assert not verdict(base, peft, [trace([1, 5]), trace([3, 9], 0.1)]).passed  # peft was sure (gap 2): a real miss


def _adapter(tmp_path: Path, keys: list[str]) -> Path:
    import torch
    from safetensors.torch import save_file

    save_file({key: torch.zeros(1) for key in keys}, str(tmp_path / "adapter_model.safetensors"))
    return tmp_path


def test_the_engine_refuses_linear_attention_lora_only_after_a_failed_probe(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATENTQA_PROBE_RECORD", str(tmp_path / "record.json"))
    linear = _adapter(tmp_path, ["base_model.model.model.language_model.layers.0.linear_attn.in_proj_qkv.lora_A.weight",
                                 "base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_A.weight"])
    check_linear_attention_lora(linear, QWEN3_5)  # no probe ran here yet: served
    record_path().write_text(json.dumps({vllm_identity(): {"passed": False, "detail": "vLLM equals peft on 0/3",
                                                           "when": "today"}}), encoding="utf-8")
    with pytest.raises(LinearAttentionLoraError, match=r"linear-attention projections in_proj_qkv, .*0/3"):
        check_linear_attention_lora(linear, QWEN3_5)
    check_linear_attention_lora(linear, OmegaConf.create({"model_type": "qwen3_vl"}))  # no linear attention
    record_path().write_text(json.dumps({vllm_identity(): {"passed": True}}), encoding="utf-8")
    check_linear_attention_lora(linear, QWEN3_5)  # a later probe passed: served again
