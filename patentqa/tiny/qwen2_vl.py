"""The tiny Qwen2-VL answerer (28 px a visual token, Qwen2-VL's chat template: Qwen2.5-VL's, default system
prompt). Its vision tower is the GME embedder's recipe; the weights are saved in transformers 5's layout."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from patentqa.tiny.build import TEXT_COMMON, build_family, cached
from patentqa.tiny.gme import QWEN2_VL_GME_RECIPE

QWEN2_VL_RECIPE: dict[str, Any] = {
    "name": "qwen2_vl",
    "text_config": TEXT_COMMON,
    "vision_config": QWEN2_VL_GME_RECIPE["vision_config"],
}


def tiny_qwen2_vl(cache_dir: str | Path) -> Path:
    """Directory of a tiny random Qwen2-VL answerer (``cache_dir/qwen2_vl``), built if missing."""
    return cached(Path(cache_dir) / "qwen2_vl", QWEN2_VL_RECIPE, _build_qwen2_vl)


def _build_qwen2_vl(out: Path, recipe: dict[str, Any]) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    build_family(out, recipe, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor)
