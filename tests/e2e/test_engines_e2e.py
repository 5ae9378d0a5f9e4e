"""The engines on the tiny Qwen2.5-VL, for real: transformers (batching, peft adapter swap) and
the OpenAI client against a real ``swift deploy`` on 127.0.0.1.

One real ``swift sft`` run (LoRA, lr 2e-2, 4 steps, saved at steps 2 and 4) gives two adapters
A and B that change the model. ~90 s on 2 CPU cores: sft ~30 s, deploy start-up ~30 s.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
from omegaconf import OmegaConf

from patentqa.data.prompts import Prompt, classifier_prompt
from patentqa.infer.engine import Sampling, make_engine
from patentqa.train import merge
from patentqa.train.merge import synthetic_prompts
from swift_tiny_run import swift_env, tiny_lora_sft

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

MAX_STEPS = 4
SAMPLING = Sampling(max_new_tokens=8, temperature=0.0)
DEPLOY_START_S = 150  # bounded wait for `swift deploy` to listen


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> list[Prompt]:
    """A long text-only prompt first (sorting by length moves it last), then six figure questions."""
    pages = tmp_path_factory.mktemp("engine_pages")
    return [classifier_prompt("在文件中第3页的示意图中，部件4位于部件2的什么位置？")] + synthetic_prompts(6, pages)


@pytest.fixture(scope="module")
def adapters(tiny_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Checkpoints 2 and 4 of one real `swift sft` LoRA run (high lr: the adapters matter)."""
    work = tmp_path_factory.mktemp("engine_sft")
    run_dir = tiny_lora_sft(tiny_vl, work, MAX_STEPS, "--save_steps", "2")
    a, b = run_dir / "checkpoint-2", run_dir / f"checkpoint-{MAX_STEPS}"
    for checkpoint in (a, b):
        assert (checkpoint / "adapter_config.json").is_file(), checkpoint
    return a, b


@pytest.fixture(scope="module")
def engine(tiny_vl: Path) -> Iterator[object]:
    infer_cfg = OmegaConf.load(REPO / "conf/infer/transformers.yaml")
    infer_cfg.batch_size, infer_cfg.device = 4, "cpu"
    model_cfg = OmegaConf.merge(OmegaConf.load(REPO / "conf/model/tiny.yaml"), {"path": str(tiny_vl), "build_tiny": False})
    engine = make_engine(infer_cfg, model_cfg)
    yield engine
    engine.close()


def test_batched_equals_one_at_a_time(engine: object, prompts: list[Prompt], adapters: tuple[Path, Path]) -> None:
    for name in (None, str(adapters[0])):
        engine.batch_size = 4  # batches [4 image], [2 image + the long text-only]: left padding
        batched = engine.generate(prompts, SAMPLING, adapter=name)
        engine.batch_size = 1
        single = engine.generate(prompts, SAMPLING, adapter=name)
        engine.batch_size = 4
        assert batched == single, (name, batched, single)
        assert len(batched) == len(prompts) and all(isinstance(text, str) for text in batched)
        if name is None:  # the text-only prompt (first) gets its own answer, in the caller's order
            assert batched[0] not in batched[1:], batched


def test_adapter_swap_never_reloads_the_base(engine: object, prompts: list[Prompt],
                                             adapters: tuple[Path, Path]) -> None:
    a, b = (str(path) for path in adapters)
    loads_before = engine.adapter_loads
    base = engine.generate(prompts, SAMPLING)
    out_a = engine.generate(prompts, SAMPLING, adapter=a)
    out_b = engine.generate(prompts, SAMPLING, adapter=b)
    base_again = engine.generate(prompts, SAMPLING)
    out_a_again = engine.generate(prompts, SAMPLING, adapter=a)
    assert engine.base_loads == 1
    assert out_a != base and out_b != base and out_a != out_b
    assert base_again == base  # disabling the adapters gives the base model back exactly
    assert out_a_again == out_a
    assert engine.adapter_loads - loads_before <= 2 and set(engine.loaded_adapters) >= {str(Path(a).resolve())}


def test_adapter_eviction_bounds_memory(engine: object, prompts: list[Prompt], adapters: tuple[Path, Path]) -> None:
    a, b = (str(path) for path in adapters)
    engine.max_loaded_adapters = 1
    try:
        first = engine.generate(prompts[:2], SAMPLING, adapter=a)
        engine.generate(prompts[:2], SAMPLING, adapter=b)
        assert engine.loaded_adapters == [str(Path(b).resolve())] and engine.adapter_deletes >= 1
        assert engine.generate(prompts[:2], SAMPLING, adapter=a) == first  # reloaded after eviction: same answers
        assert engine.base_loads == 1
    finally:
        engine.max_loaded_adapters = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def deployed(tiny_vl: Path, adapters: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a real `swift deploy` (transformers backend) serving the tiny model + adapter A."""
    swift = merge.swift_command()
    work = tmp_path_factory.mktemp("deploy")
    log_path = work / "deploy.log"
    argv = swift + ["deploy", "--model", str(tiny_vl), "--model_type", "qwen2_5_vl", "--template", "qwen2_5_vl",
                    "--infer_backend", "transformers", "--host", "127.0.0.1", "--port", str(_free_port()),
                    "--adapters", f"{adapters[0].name}={adapters[0]}"]
    # no --max_batch_size > 1: ms-swift 4.6's transformers backend then passes one adapter name for a
    # batch of several requests and peft raises "Length of `adapter_names` should be the same ..."
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, cwd=work, env=swift_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group: killed as a whole below
    try:
        deadline = time.monotonic() + DEPLOY_START_S
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
            url = f"{found.group(1)}/v1" if found else None
            time.sleep(0.5)
        if url is None:
            tail = log_path.read_text(errors="replace")[-4000:]
            pytest.fail(f"swift deploy did not start within {DEPLOY_START_S} s (exit {proc.poll()}); log {log_path}\n{tail}")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_openai_engine_against_swift_deploy(deployed: str, prompts: list[Prompt], adapters: tuple[Path, Path],
                                            tiny_vl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # local server: "EMPTY"
    infer_cfg = SimpleNamespace(name="openai", base_url=deployed, model_name=None, concurrency=2, timeout_s=60,
                                max_retries=2, retry_backoff_s=0.5, extra_body={"repetition_penalty": 1.0})
    engine = make_engine(infer_cfg, SimpleNamespace(image_factor=28))
    try:
        chosen = [prompts[1], prompts[2], prompts[0]]  # two with an image, one text-only
        base = engine.generate(chosen, SAMPLING)
        assert len(base) == 3 and all(isinstance(text, str) and text for text in base), base
        tuned = engine.generate(chosen[:2], SAMPLING, adapter=str(adapters[0]))  # served as checkpoint-2
        assert len(tuned) == 2 and all(isinstance(text, str) for text in tuned), tuned
        assert tuned != base[:2]  # the server applied the adapter
        assert engine.model_for(None) == tiny_vl.name and engine.model_for(str(adapters[0])) == adapters[0].name
    finally:
        engine.close()
