"""Engine implementations of ``patentqa.infer.engine.Engine``; ``make_engine`` picks one by name.

Each backend is imported only when it is asked for (vLLM is heavy and optional).
"""
from __future__ import annotations

from typing import Any, Sequence

from patentqa.infer.engine import Engine

ENGINES = ("transformers", "vllm", "openai")


def make_engine(infer_cfg: Any, model_cfg: Any, adapters: Sequence[Any] = ()) -> Engine:
    """The engine named by ``infer_cfg.name``; ``adapters``: the LoRA checkpoint dirs it will serve
    (vLLM sizes ``max_lora_rank`` from them and refuses vision-tower LoRA before it starts)."""
    name = infer_cfg.name
    if name == "transformers":
        from patentqa.infer.engines.transformers_engine import TransformersEngine

        return TransformersEngine.from_config(infer_cfg, model_cfg)
    if name == "vllm":
        from patentqa.infer.engines.vllm_engine import VllmEngine

        return VllmEngine.from_config(infer_cfg, model_cfg, adapters)
    if name == "openai":
        from patentqa.infer.engines.openai_engine import OpenAIEngine

        return OpenAIEngine.from_config(infer_cfg, model_cfg)
    raise ValueError(f"unknown infer.name {name!r} (expected one of {', '.join(ENGINES)})")


def full_checkpoint_model(model_cfg: Any, path: Any) -> Any:
    """The model config that loads a full fine-tuning checkpoint dir as the model (weights from ``path``)."""
    from omegaconf import OmegaConf, open_dict

    from patentqa.device import is_tiny

    model = OmegaConf.merge(model_cfg, {"path": str(path), "build_tiny": False})
    with open_dict(model):  # a checkpoint of the tiny test model is a tiny model too (its dir has no tiny.json)
        model.tiny = is_tiny(model_cfg)
    return model
