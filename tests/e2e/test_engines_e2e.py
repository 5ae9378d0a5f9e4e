"""The transformers engine on the tiny Qwen2.5-VL, for real: batching, peft adapter swap, eviction.

The two adapters A and B (``adapters``, tests/e2e/conftest.py) come from one real ``swift sft``
run. vLLM, ``vllm serve`` and the OpenAI client are in test_vllm.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from omegaconf import OmegaConf

from patentqa.data.prompts import Prompt, classifier_prompt
from patentqa.infer.engine import Sampling
from patentqa.infer.engines import make_engine
from patentqa.train.equivalence import synthetic_prompts

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

SAMPLING = Sampling(max_new_tokens=8, temperature=0.0)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> list[Prompt]:
    """A long text-only prompt first (sorting by length moves it last), then six figure questions."""
    pages = tmp_path_factory.mktemp("engine_pages")
    return [classifier_prompt("在文件中第3页的示意图中，部件4位于部件2的什么位置？")] + synthetic_prompts(6, pages)


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
