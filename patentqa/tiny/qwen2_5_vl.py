"""The tiny Qwen2.5-VL answerer (28 px a visual token, Qwen2.5-VL's chat template)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from patentqa.tiny.build import TEXT_COMMON, VISION_COMMON, build_family, cached

QWEN2_5_VL_RECIPE: dict[str, Any] = {
    "name": "qwen2_5_vl",
    "text_config": TEXT_COMMON,
    "vision_config": {
        **VISION_COMMON,
        "patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    },
}


def tiny_qwen2_5_vl(cache_dir: str | Path) -> Path:
    """Directory of a tiny random Qwen2.5-VL (``cache_dir/qwen2_5_vl``), built if missing."""
    return cached(Path(cache_dir) / "qwen2_5_vl", QWEN2_5_VL_RECIPE, _build_qwen2_5_vl)


def _build_qwen2_5_vl(out: Path, recipe: dict[str, Any]) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    build_family(out, recipe, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)
