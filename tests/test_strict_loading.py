"""Strict loading: GME fails on missing or unexpected keys (naming them), the tiny embedder is in GME's
published key layout, vLLM refuses an adapter with vision-tower LoRA weights, and ``max_lora_rank``
comes from the adapters served."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from patentqa.config import group_config
from patentqa.data.embed import GME_UNUSED_KEYS, GmeLoadError, load_gme, loading_problems
from patentqa.infer.engines.vllm_engine import (TowerLoraError, check_tower_lora, llm_kwargs, served_lora_rank,
                                                tower_lora_keys)
from patentqa.tiny import GME_LAYOUT, gme_layout


def test_tiny_embedder_is_saved_in_gme_layout_and_loads_strictly(tiny_embedder: Path) -> None:
    with safe_open(str(tiny_embedder / "model.safetensors"), framework="pt") as handle:
        keys = list(handle.keys())
    assert all(k.startswith(tuple(GME_LAYOUT)) for k in keys)
    assert not any(k.startswith(("model.language_model.", "model.visual.")) for k in keys)
    assert {"visual.patch_embed.proj.weight", "model.embed_tokens.weight", "lm_head.weight"} <= set(keys)
    assert gme_layout(["model.language_model.layers.0.mlp.up_proj.weight", "model.visual.merger.mlp.0.bias",
                       "lm_head.weight"]) == {"model.language_model.layers.0.mlp.up_proj.weight": "model.layers.0.mlp."
                                              "up_proj.weight", "model.visual.merger.mlp.0.bias": "visual.merger.mlp.0."
                                              "bias", "lm_head.weight": "lm_head.weight"}
    model = load_gme(str(tiny_embedder), "float32", "cpu")  # the path GmeEmbedder loads through
    assert model.config.model_type == "qwen2_vl"


def _variant(tiny_embedder: Path, out: Path, drop: str | None = None, add: str | None = None) -> Path:
    shutil.copytree(tiny_embedder, out)
    weights = load_file(out / "model.safetensors")
    if drop:
        del weights[drop]
    if add:
        weights[add] = torch.zeros(2)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_gme_with_a_missing_or_an_unexpected_key_fails_naming_it(tiny_embedder: Path, tmp_path: Path) -> None:
    missing = _variant(tiny_embedder, tmp_path / "missing", drop="model.layers.1.mlp.down_proj.weight")
    with pytest.raises(GmeLoadError, match=r"missing keys \(would be random\): .*layers\.1\.mlp\.down_proj\.weight"):
        load_gme(str(missing), "float32", "cpu")
    extra = _variant(tiny_embedder, tmp_path / "extra", add="model.score.weight")
    with pytest.raises(GmeLoadError, match=r"unexpected keys .*model\.score\.weight"):
        load_gme(str(extra), "float32", "cpu")


def test_loading_problems_allows_only_gme_unused_lm_head() -> None:
    assert loading_problems({"missing_keys": [], "unexpected_keys": ["lm_head.weight"], "mismatched_keys": [],
                             "error_msgs": []}) == []
    assert GME_UNUSED_KEYS == {"lm_head.weight"}
    problems = loading_problems({"missing_keys": [f"k{i}" for i in range(12)], "unexpected_keys": ["x"],
                                 "mismatched_keys": [("w", (1,), (2,))], "error_msgs": ["boom"]})
    assert len(problems) == 4 and "(12 in all)" in problems[0] and problems[2].endswith("w")


def fake_adapter(folder: Path, rank: int = 8, tower: bool = False) -> Path:
    """A LoRA checkpoint as swift writes it (peft key names), optionally with vision-tower weights."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA", "rank_pattern": {}}))
    prefix = "base_model.model.model."
    weights = {f"{prefix}language_model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(rank, 4),
               f"{prefix}language_model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(4, rank)}
    if tower:
        weights[f"{prefix}visual.blocks.0.attn.qkv.lora_A.weight"] = torch.zeros(rank, 4)
        weights[f"{prefix}visual.blocks.0.attn.qkv.lora_B.weight"] = torch.zeros(12, rank)
    save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return folder


def test_an_adapter_with_vision_tower_lora_is_refused_naming_the_file(tmp_path: Path) -> None:
    plain = fake_adapter(tmp_path / "plain")
    tower = fake_adapter(tmp_path / "tower", tower=True)
    assert tower_lora_keys(plain) == [] and len(tower_lora_keys(tower)) == 2
    check_tower_lora(plain)
    with pytest.raises(TowerLoraError, match=r"tower/adapter_model\.safetensors holds 2 LoRA weights of the vision "
                                             r"tower .*freeze_vit=false.*vllm #26991"):
        check_tower_lora(tower)
    check_tower_lora(tower, tower_lora=True)  # infer.tower_lora=true: vLLM's enable_tower_connector_lora serves them


def test_max_lora_rank_comes_from_the_adapters_served(tmp_path: Path) -> None:
    r8, r12, r64 = (fake_adapter(tmp_path / f"r{r}", rank=r) for r in (8, 12, 64))
    assert served_lora_rank(None, [r8]) == 8 and served_lora_rank(None, [r8, r12]) == 16
    assert served_lora_rank(None, [r8, r64]) == 64
    assert served_lora_rank(None, []) is None  # nothing to serve: LoRA off
    assert served_lora_rank(30, [r8]) == 32  # an explicit value wins, rounded up to vLLM's set
    infer_cfg = group_config("infer", "vllm")
    assert infer_cfg.max_lora_rank is None  # the default derives it
    model_cfg = OmegaConf.create({"path": "/m", "torch_dtype": "bfloat16"})
    kwargs = llm_kwargs(infer_cfg, model_cfg, served_lora_rank(infer_cfg.max_lora_rank, [r8]))
    assert kwargs["enable_lora"] and kwargs["max_lora_rank"] == 8 and "enable_tower_connector_lora" not in kwargs
    assert "enable_lora" not in llm_kwargs(infer_cfg, model_cfg, None)
    infer_cfg.tower_lora = True
    assert llm_kwargs(infer_cfg, model_cfg, 8)["enable_tower_connector_lora"] is True
