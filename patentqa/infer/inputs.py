"""Model inputs for the transformers engine: prompts → one left-padded ``BatchFeature``.

Text comes from the processor's chat template over ``to_chat_messages``; images come from
``load_images``, already resized to each image's budget by qwen-vl-utils, exactly as
ms-swift's ``qwen2_5_vl`` template resizes them for training. The image processor is then
told not to resize again (``do_resize=False``, as swift does when it encodes a row), so the
grid is the budgeted image's and the pixels are the ones the model was trained on. A slicing family
(MiniCPM-V) is told its run's slice settings instead (``Family.image_kwargs``): its processor must resize.
``tests/test_parity.py`` proves the ids, grids and pixels equal swift's.
"""
from __future__ import annotations

from typing import Any, Mapping

from patentqa.data.prompts import Prompt, load_images, to_chat_messages


def prompt_text(processor: Any, prompt: Prompt, template_kwargs: Mapping[str, Any] | None = None) -> str:
    """The chat-templated prompt string, ending with the assistant header (``template_kwargs``: the model's,
    ``patentqa.models.chat_template_kwargs``)."""
    return processor.apply_chat_template(to_chat_messages(prompt), tokenize=False, add_generation_prompt=True,
                                         **(template_kwargs or {}))


def processor_factor(image_processor: Any) -> int:
    """Pixels a side of one visual token of an image processor: patch_size × merge_size (Qwen); MiniCPM-V's names
    no merge size: its 2 × 2 window merger makes a 4x-mode token 2 patches a side."""
    return int(image_processor.patch_size) * int(getattr(image_processor, "merge_size", 2))


def encode_prompts(processor: Any, prompts: list[Prompt], factor: int = 28,
                   template_kwargs: Mapping[str, Any] | None = None,
                   image_kwargs: Mapping[str, Any] | None = None, resize: bool = True) -> Any:
    """Token ids, attention mask and pixels of ``prompts``, left-padded for batched generation.

    ``factor`` must equal the processor's (``processor_factor``: 28 for Qwen2.5-VL). ``image_kwargs``: what the
    image processor is told (the family's ``Family.image_kwargs``; default a Qwen's ``do_resize=False``);
    ``resize``: images resized to their budgets first (``load_images``; False for a slicing family).
    Text-only prompts may be mixed with image prompts.
    """
    expected = processor_factor(processor.image_processor)
    if factor != expected:
        raise ValueError(f"factor {factor} != the processor's patch_size * merge_size ({expected})")
    texts = [prompt_text(processor, prompt, template_kwargs) for prompt in prompts]
    images = [image for prompt in prompts for image in load_images(prompt, factor, resize)]
    return processor(
        text=texts,
        images=images or None,
        padding=True,
        padding_side="left",
        return_tensors="pt",
        images_kwargs=dict(image_kwargs) if image_kwargs is not None else {"do_resize": False},
    )
