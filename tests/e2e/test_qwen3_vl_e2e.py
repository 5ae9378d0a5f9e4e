"""The tiny Qwen3-VL through the project's own paths: ``patentqa.train`` (data stage → real ``swift sft
--model_type qwen3_vl --template qwen3_vl``, LoRA) and the transformers engine generating from page images."""
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


@pytest.fixture(scope="module")
def run(qwen3_run: tuple[Any, Any]) -> tuple[Any, Any]:
    """(config, result) of the session's 4-step LoRA run of +exp=smoke model=tiny_qwen3_vl (tests/conftest.py
    ``qwen3_run``: retrieval=none, 6 documents; its checkpoints are also test_vllm's and test_merge's adapters)."""
    return qwen3_run


def test_swift_sft_trains_the_tiny_qwen3_vl(run) -> None:
    cfg, result = run
    assert result.exit_code == 0 and [c.step for c in result.checkpoints] == [2, 4]
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["launch_env"]["IMAGE_MAX_TOKEN_NUM"] == "128" and "MAX_PIXELS" not in manifest["launch_env"]
    args = result.command
    assert args[args.index("--model_type") + 1] == "qwen3_vl" and args[args.index("--template") + 1] == "qwen3_vl"
    rows = [json.loads(line) for line in (Path(manifest["dataset"]["dir"]) / "train.jsonl").read_text().splitlines()]
    assert {r["chat_template_kwargs"]["max_pixels"] for r in rows} <= {64 * 32 * 32, 128 * 32 * 32}  # tokens of 32 px
    log = (result.run_dir / "logs" / "swift_sft.log").read_text(encoding="utf-8")  # swift's output, as train() keeps it
    assert "Traceback" not in log
    losses = [float(v) for v in re.findall(r"\{'loss': '([^']+)'", log)]  # swift's training log lines
    assert losses and all(math.isfinite(v) for v in losses), losses


def test_transformers_engine_generates_from_pages_on_qwen3_vl(run) -> None:
    cfg, result = run
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
        assert engine.factor == 32 and int((batch["input_ids"] == IMAGE_PAD).sum()) == int(grids.prod(dim=1).sum()) // 4
        sampling = Sampling(max_new_tokens=6)
        base = engine.generate(prompts, sampling)
        tuned = engine.generate(prompts, sampling, adapter=str(result.checkpoints[-1].path))
        assert len(base) == len(tuned) == len(prompts) and all(isinstance(t, str) for t in base + tuned)
        assert base != tuned, base  # lr 2e-2 over 4 steps: the adapter changes some answer
    finally:
        engine.close()
