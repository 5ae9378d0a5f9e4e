"""MiniCPM-V 4.6 (the successor of write-up 003's MiniCPM-Llama3-V-2.5; one swift model type, ``minicpmv4_6``):
a SigLIP vision tower (14 px patches) with a window-attention merger, MiniCPM's merger MLP, and a hybrid Qwen3.5
text decoder (``qwen3_5_text``: Gated DeltaNet + full attention, the cache of ``qwen3_5.hybrid_cache``).

Images are budgeted by slicing, not by pixels: the processor cuts a page into up to ``max_slice_nums`` (1-9)
slices of about 448 × 448 px plus an overview, and each part is a fixed number of tokens set by
``downsample_mode``: "16x" merges 4 × 4 patches into a token (64 a 448 px slice), "4x" 2 × 2 (256 a slice).
``slice_rule`` turns a run's per-form token budgets into the one setting ms-swift's ``minicpmv4_6`` template
reads for the whole run (``MAX_SLICE_NUMS``, ``DOWNSAMPLE_MODE``): the setting that gives the most tokens with
every form's page within its budget. ``image_factor`` is 28 (14 px × the 2 × 2 window merger: a 4x token's
side): pages are rendered at budget × 28² px, so a page never holds more pixels than its densest setting
spends. Token counts come from the installed image processor's own grid rules (``slice_tokens``).

The chat template is a thinking template (swift: ``<think>\\n\\n</think>\\n\\n`` with thinking off); an image is
written ``<|image_pad|>\\n`` and expanded by the processor to ``<image>…</image><slice>…</slice>…``.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

from patentqa.models.family import Family
from patentqa.models.qwen3_5 import LINEAR_ATTENTION_PROJECTIONS, hybrid_cache

SCALE_RESOLUTION = 448  # a slice's side, the processor's default
PATCH = 14
MAX_SLICES = 9          # the processor's (and swift's) default and its largest
MODES = ("16x", "4x")   # tokens of a 14 px patch: 1/16 and 1/4
DEFAULT = {"max_slice_nums": MAX_SLICES, "downsample_mode": "16x"}  # the processor's and swift's defaults


@functools.lru_cache(maxsize=1)
def _image_processor() -> Any:
    from transformers import MiniCPMV4_6ImageProcessor

    return MiniCPMV4_6ImageProcessor()


def slice_tokens(height: int, width: int, settings: Mapping[str, Any]) -> int:
    """Visual tokens MiniCPM-V 4.6's processor gives an image of ``height`` × ``width`` px under ``settings``
    (``max_slice_nums``, ``downsample_mode``; missing: the defaults): the overview plus every slice, each
    (its 14 px patches) / 16 at "16x" or / 4 at "4x" — the processor's own grid and resize rules."""
    processor = _image_processor()
    slices = int(settings.get("max_slice_nums", DEFAULT["max_slice_nums"]))
    divisor = 4 if settings.get("downsample_mode", DEFAULT["downsample_mode"]) == "4x" else 16
    grid = processor.get_sliced_grid((height, width), slices, SCALE_RESOLUTION)
    h, w = processor.find_best_resize((height, width), SCALE_RESOLUTION, PATCH, allow_upscale=grid is None)
    tokens = (h // PATCH) * (w // PATCH) // divisor
    if grid is not None:
        rows, cols = grid
        h, w = processor.get_refine_size((height, width), grid, SCALE_RESOLUTION, PATCH, allow_upscale=True)
        tokens += rows * cols * ((h // rows // PATCH) * (w // cols // PATCH) // divisor)
    return tokens


def slice_rule(pages: Mapping[str, tuple[int, int]], budgets: Mapping[str, int]) -> dict[str, Any]:
    """The one slice setting of a run: among ``max_slice_nums`` 1-9 × ``downsample_mode`` 16x / 4x, the one whose
    tokens summed over the forms are largest with each form's page (``pages[form]``: its (height, width) as
    rendered) within its budget (ties: fewer slices, then 16x). A budget below the least setting's tokens gets
    the least setting (one slice, 16x): the alignment command prints each form's tokens beside its budget."""
    best: tuple[int, dict[str, Any]] | None = None
    for mode in MODES:
        for slices in range(1, MAX_SLICES + 1):
            setting = {"max_slice_nums": slices, "downsample_mode": mode}
            tokens = {form: slice_tokens(*pages[form], setting) for form in budgets}
            if all(tokens[form] <= int(budgets[form]) for form in budgets):
                total = sum(tokens.values())
                if best is None or total > best[0]:
                    best = (total, setting)
    return best[1] if best else {"max_slice_nums": 1, "downsample_mode": "16x"}


FAMILY = Family(
    name="MiniCPM-V 4.6",
    model_type="minicpmv4_6",
    templates=("minicpmv4_6",),
    config_class="MiniCPMV4_6Config",
    model_class="MiniCPMV4_6ForConditionalGeneration",
    processor_class="MiniCPMV4_6Processor",
    image_factor=28,
    budget_unit="slices",
    tiny="patentqa.tiny.minicpm_v:tiny_minicpm_v_4_6",
    cache=hybrid_cache,
    thinking_template=True,
    linear_attention_lora=LINEAR_ATTENTION_PROJECTIONS,
    vision_modules=("vision_tower", "merger"),
    slice_rule=slice_rule,
    slice_tokens=slice_tokens,
)
