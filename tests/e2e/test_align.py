"""``python -m patentqa.infer.align``: for every prompt form, swift's training template, the HF processor of the
transformers engine and vLLM's own processor build the same ids, grids and pixels on every tiny family; a
misalignment a user can make exits 1 naming the first difference; bad input exits 2 with one line."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, cache_root
from patentqa.data.prompts import FORMS
from patentqa.infer.align import main

pytestmark = pytest.mark.e2e
# training starts <|im_start|>system, inference <|im_start|>user: the second id differs (its first BPE piece)
SYSTEM_VS_USER = r"input_ids\[1\]: training \d+ 's\w*' != inference \d+ 'u\w*'"


def overrides(model: str, model_dir: str) -> list[str]:
    """The smoke run's budgets (64 / 128 tokens) on a tiny model in the session's cache."""
    return ["+exp=smoke", f"model={model}", f"model.path={cache_root() / 'tiny' / model_dir}"]


def assert_aligned(output: str) -> None:
    for form in FORMS:
        assert re.search(rf"^  {form} +OK +\d+ ids, image tokens \d+", output, re.M), output
    assert output.rstrip().endswith("aligned: 3 of 3 forms"), output


def test_the_command_passes_for_the_tiny_qwen2_5_vl(tiny_vl: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "patentqa.infer.align", *overrides("tiny", "qwen2_5_vl")], cwd=REPO,
                          env={**os.environ, "PATENTQA_CACHE": str(cache_root())}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert_aligned(done.stdout)
    assert "model=tiny (qwen2_5_vl, template qwen2_5_vl)" in done.stdout


def test_tiny_qwen3_vl_aligns_and_each_misalignment_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    """In this process (the imports shared): the tiny Qwen3-VL passes; a system prompt given to swift sft only
    (train.extra_args.system, a common swift flag) and a Qwen2.5-VL image factor each exit 1 naming the difference."""
    from patentqa.tiny import tiny_qwen3_vl

    tiny_qwen3_vl(cache_root() / "tiny")
    qwen3 = overrides("tiny_qwen3_vl", "qwen3_vl")
    assert main(qwen3) == 0
    assert_aligned(capsys.readouterr().out)

    assert main([*qwen3, '+train.extra_args.system="你是一个专利分析专家。"']) == 1
    out = capsys.readouterr().out
    for form in FORMS:
        assert re.search(rf"^  {form} +DIFFERS +{SYSTEM_VS_USER}$", out, re.M), out
    assert re.search(rf"^MISALIGNED: with_context: {SYSTEM_VS_USER}$", out, re.M), out

    assert main([*qwen3, "model.image_factor=28"]) == 1
    out = capsys.readouterr().out
    assert "image_factor: model.image_factor 28 != HF processor patch_size x merge_size 32 (16 x 2)" in out, out
    assert out.rstrip().splitlines()[-1].startswith("MISALIGNED: image_factor"), out


@pytest.fixture
def cuda_dispatch(monkeypatch: pytest.MonkeyPatch) -> list:
    """vLLM's custom ops dispatch as on a CUDA node (``forward_cuda``: the input norm's Triton kernel, which a host
    tensor fails); the norm ops align builds are collected."""
    import vllm.model_executor.custom_op as custom_op
    from vllm.model_executor.layers.fusion import mm_input_norm

    not_cuda = ("is_rocm", "is_cpu", "is_tpu", "is_xpu", "is_out_of_tree")
    monkeypatch.setattr(custom_op, "current_platform", SimpleNamespace(**{name: lambda: False for name in not_cuda}))
    built, build = [], mm_input_norm.build_mm_input_norm

    def spy(model_config):  # noqa: ANN001, ANN202
        built.append(build(model_config))
        return built[-1]

    monkeypatch.setattr(mm_input_norm, "build_mm_input_norm", spy)
    return built


def test_tiny_qwen2_vl_aligns_at_28_px_with_vllm_on_its_cuda_dispatch(cuda_dispatch: list,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The tiny Qwen2-VL passes (swift's qwen2_vl template with its default system prompt, on both sides), with vLLM's
    input norm built as on a GPU node (its Triton path; align compares through the op's PyTorch reference);
    Qwen3-VL's factor given to it exits 1 naming the factor."""
    from patentqa.tiny import tiny_qwen2_vl

    tiny_qwen2_vl(cache_root() / "tiny")
    qwen2 = overrides("tiny_qwen2_vl", "qwen2_vl")
    assert main(qwen2) == 0
    out = capsys.readouterr().out
    assert_aligned(out)
    op = cuda_dispatch[0]
    assert type(op).__name__ == "FusedMMInputNorm" and op._forward_method == op.forward_cuda, op  # the GPU dispatch
    assert "model=tiny_qwen2_vl (qwen2_vl, template qwen2_vl)" in out, out
    assert main([*qwen2, "model.image_factor=32"]) == 1
    assert "image_factor: model.image_factor 32 != HF processor patch_size x merge_size 28 (14 x 2)" in \
        capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["model=no_such_model"], "no_such_model"),
    (["model=tiny", "model.build_tiny=false", "model.path=/nonexistent/tiny"], "/nonexistent/tiny does not exist"),
])
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_qwen3_8_reasoning_line_and_the_think_opener_align_with_thinking_on(capsys: pytest.CaptureFixture[str]) -> None:
    """A thinking template with ``model.thinking=true``: swift's qwen3_8 template and Qwen3.8's chat template both
    open the system prompt with the reasoning-effort line, and inference starts where the SFT row's reasoning
    does (after ``<think>\\n``). Swift's qwen3_8 over a checkpoint whose chat template is Qwen3.5's (no such line)
    exits 1 at the system turn."""
    from patentqa.tiny import tiny_qwen3_5, tiny_qwen3_8

    tiny_qwen3_8(cache_root() / "tiny")
    tiny_qwen3_5(cache_root() / "tiny")
    assert main([*overrides("tiny_qwen3_8", "qwen3_8"), "model.thinking=true"]) == 0
    out = capsys.readouterr().out
    assert_aligned(out)
    assert "model=tiny_qwen3_8 (qwen3_5, template qwen3_8), thinking on" in out, out

    qwen3_5_checkpoint = [*overrides("tiny_qwen3_5", "qwen3_5"), "model.build_tiny=false"]  # its own template
    assert main([*qwen3_5_checkpoint, "model.template=qwen3_8", "model.thinking=true"]) == 1
    out = capsys.readouterr().out
    assert re.search(rf"^MISALIGNED: with_context: {SYSTEM_VS_USER}$", out, re.M), out
