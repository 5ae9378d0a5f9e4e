"""``python -m patentqa.gpucheck`` in its CPU form: the first-day node check runs every path and passes here."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, cache_root
from patentqa.gpucheck import kv_cache_as_planned

pytestmark = pytest.mark.e2e


def test_cpu_form_runs_every_check_and_passes(tmp_path: Path) -> None:
    env = {**os.environ, "PATENTQA_CACHE": str(cache_root()),  # the session's tiny models, not a second build
           "PATENTQA_PROBE_RECORD": str(tmp_path / "probe.json")}  # the probe's verdict, not the user's cache
    done = subprocess.run([sys.executable, "-m", "patentqa.gpucheck", f"out_dir={tmp_path}", "form=cpu",
                           "families=[tiny_qwen2_vl]"],  # one family's rows (each tiny family has its e2e tests)
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpucheck.json").read_text())
    names = [c["name"] for c in report["checks"]]
    assert names == ["environment", "sft_1_rank", "sft_zero3_2_ranks", "parity_vllm_lora", "linear_attention_lora",
                     "align_tiny_qwen2_vl", "lora_parity_tiny_qwen2_vl", "grpo_vllm_colocate", "one_model_at_a_time"]
    assert report["passed"] and all(c["passed"] for c in report["checks"])
    table = done.stdout.splitlines()[-len(names):]
    assert [line.split()[1] for line in table] == ["PASS"] * len(names), done.stdout
    for ranks in (1, 2):  # each training check left its checkpoints, trained as one job of its ranks
        assert len(list((tmp_path / "runs" / f"sft_{ranks}").glob("swift/v*/checkpoint-*/trainer_state.json"))) == 2
        summary = json.loads((tmp_path / "runs" / f"sft_{ranks}" / "manifest.json").read_text())["summary"]
        assert summary["swift_world_size"] == ranks and "ranks_trained_apart" not in summary, summary
    parity = json.loads((tmp_path / "runs" / "sft_1" / "eval" / "parity.json").read_text())
    assert parity["all_identical"] and parity["targets"] == ["base", "checkpoint-2"]
    # the KV cache vLLM allocated (1 GiB fixed) is the plan's, block for block; one block more would fail the row
    check = {c["name"]: c for c in report["checks"]}
    assert "KV cache: vLLM 8,192 blocks of 128 tokens = plan 8,192 of 128" in check["parity_vllm_lora"]["detail"]
    parity["kv_cache"]["blocks"] += 1
    assert not kv_cache_as_planned(tmp_path / "runs" / "sft_1", parity)[0]
    assert check["align_tiny_qwen2_vl"]["detail"].endswith("aligned: 3 of 3 forms"), check["align_tiny_qwen2_vl"]
    assert "language-model LoRA in vLLM (down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj): PASS" in \
        check["lora_parity_tiny_qwen2_vl"]["detail"]
    assert "rollouts by transformers" in check["grpo_vllm_colocate"]["detail"]
    assert len(list((tmp_path / "runs" / "grpo").glob("swift/v*/checkpoint-*/trainer_state.json"))) == 2
    probe = next(c for c in report["checks"] if c["name"] == "linear_attention_lora")
    assert "linear-attention LoRA in vLLM (in_proj_a, in_proj_b, in_proj_qkv, in_proj_z, out_proj): PASS" in \
        probe["detail"], probe
    verdicts = json.loads((tmp_path / "probe.json").read_text())
    assert [v["passed"] for v in verdicts.values()] == [True], verdicts
    events = [json.loads(line) for line in (tmp_path / "residency.jsonl").read_text().splitlines()]
    # the parity check's, the two probes' transformers then vLLM; the GRPO row's sweep (transformers), the merge of its
    # best checkpoint (swift export, then the equivalence check's base + adapter and merged model), swift rlhf: each
    # released before the next
    kinds = [e["kind"] for e in events[::2]]
    assert [(e["event"], e["kind"]) for e in events] == [(event, kind) for kind in kinds for event in ("load", "release")]
    assert kinds == ["transformers", "vllm"] * 3 + [
        "transformers", "swift export", "transformers", "transformers", "swift rlhf"], events
    names = [Path(e["name"]).name for e in events[::2]]
    assert names[:7] == ["qwen2_5_vl"] * 2 + ["qwen3_5"] * 2 + ["qwen2_vl"] * 2 + ["qwen2_5_vl"], events
    best = names[7]  # GRPO's policy: the SFT run's best checkpoint, merged
    assert re.fullmatch(r"checkpoint-[12]", best) and names[7:] == [best, best, f"{best}-merged", f"{best}-merged"], names
