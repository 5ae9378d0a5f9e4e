"""The tiny Qwen3-VL and Qwen2-VL through the project's own paths: ``patentqa.train`` (data stage → real ``swift sft
--model_type <family> --template <family>``, LoRA) and the transformers engine generating from page images, each
family's image budget in the units its swift loader reads (Qwen3-VL: tokens of 32 px; Qwen2-VL: pixels at 28 px)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from conftest import REPO
from patentqa.data.prompts import prompt_from_json
from patentqa.infer.engine import Sampling
from patentqa.infer.engines import make_engine

pytestmark = pytest.mark.e2e
IMAGE_PAD = 151655


# family: (session run fixture, model type, px a token, swift's row-less budget env)
FAMILIES = {"qwen3_vl": ("qwen3_run", 32, {"IMAGE_MAX_TOKEN_NUM": "128"}),
            "qwen2_vl": ("qwen2_vl_run", 28, {"MAX_PIXELS": str(128 * 28 * 28)})}


@pytest.fixture(scope="module", params=FAMILIES)
def run(request: pytest.FixtureRequest) -> tuple[Any, Any, str]:
    """(config, result, model type) of the session's 4-step LoRA run of +exp=smoke model=tiny_<family>
    (tests/conftest.py ``smoke_run``: retrieval=none, 6 documents; its checkpoints are also test_vllm's adapters)."""
    return (*request.getfixturevalue(FAMILIES[request.param][0]), request.param)


def test_swift_sft_trains_the_tiny_family(run) -> None:
    cfg, result, model_type = run
    _, factor, env = FAMILIES[model_type]
    assert result.exit_code == 0 and [c.step for c in result.checkpoints] == [2, 4]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    budget = {k: v for k, v in manifest["launch_env"].items() if k in ("IMAGE_MAX_TOKEN_NUM", "MAX_PIXELS")}
    assert budget == env, manifest["launch_env"]
    args = result.command
    assert args[args.index("--model_type") + 1] == model_type and args[args.index("--template") + 1] == model_type
    rows = [json.loads(line) for line in (Path(manifest["dataset"]["dir"]) / "train.jsonl").read_text().splitlines()]
    assert {r["chat_template_kwargs"]["max_pixels"] for r in rows} <= {64 * factor ** 2, 128 * factor ** 2}
    log = (result.run_dir / "logs" / "swift_sft.log").read_text(encoding="utf-8")  # swift's output, as train() keeps it
    assert "Traceback" not in log
    losses = [float(v) for v in re.findall(r"\{'loss': '([^']+)'", log)]  # swift's training log lines
    assert losses and all(math.isfinite(v) for v in losses), losses


def test_transformers_engine_generates_from_pages(run) -> None:
    cfg, result, model_type = run
    factor = FAMILIES[model_type][1]
    dataset = Path(json.loads((result.run_dir / "manifest.json").read_text())["dataset"]["dir"])
    records = [json.loads(line) for line in (dataset / "dev_eval.jsonl").read_text().splitlines()][:3]
    prompts = [prompt_from_json(r["prompt"]) for r in records]
    assert all(p.images for p in prompts)
    infer_cfg = OmegaConf.load(REPO / "conf/infer/transformers.yaml")
    infer_cfg.device, infer_cfg.batch_size = "cpu", 3
    engine = make_engine(infer_cfg, cfg.model)
    try:
        from patentqa.infer.inputs import encode_prompts

        batch = encode_prompts(engine.processor, prompts, factor=engine.factor)
        grids = batch["image_grid_thw"]
        assert engine.factor == factor and int((batch["input_ids"] == IMAGE_PAD).sum()) == int(grids.prod(dim=1).sum()) // 4
        sampling = Sampling(max_new_tokens=6)
        base = engine.generate(prompts, sampling)
        tuned = engine.generate(prompts, sampling, adapter=str(result.checkpoints[-1].path))
        assert len(base) == len(tuned) == len(prompts) and all(isinstance(t, str) for t in base + tuned)
        assert base != tuned, base  # lr 2e-2 over 4 steps: the adapter changes some answer
    finally:
        engine.close()
