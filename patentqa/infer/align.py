"""Processor alignment: the tensors swift trains on are the tensors the inference engines feed the model.

    python -m patentqa.infer.align model=tiny_qwen3_vl [+exp=smoke] [OVERRIDES]

For each prompt form the pipeline sends (with_context, figure_only, document), built by the one prompt
builder over small drawn pages at the run's token budgets for the model's family, three sides encode it:

- training: ms-swift's template for ``model.template`` in train mode, built from the run's own
  ``swift sft`` arguments (``swift_args.render``) under the image budget of its launch environment,
  encodes the SFT row (``to_swift_row``) as ``swift sft`` encodes its dataset: the ids before the first
  trained-on token, ``pixel_values``, ``image_grid_thw``;
- inference: the HF processor as the transformers engine calls it (``encode_prompts`` at
  ``model.image_factor``);
- vllm: vLLM's own multimodal processor for the model (its registry and a ``ModelConfig`` from the vLLM
  engine's arguments: no engine, no weights) on the request the vLLM engine sends (``to_vllm_request``):
  its image-token count per image (placeholder lengths), prompt ids, grids and pixels (vLLM hands raw uint8
  pixels to the model, which normalises them itself: compared after vLLM's own normalisation, within
  float32 rounding, ``VLLM_PIXEL_ATOL``).

A thinking template (``model.thinking``, Qwen3.5's family) is told the same ``enable_thinking`` on every side.
With thinking on, the model writes its reasoning after the prompt's ``<think>``: the SFT row answers with a
reasoning block (swift labels it from ``<think>`` on), and the training side is the row's ids through that
opening ``<think>`` line, which is where inference starts generating.

training == inference exactly and vllm == inference, tensor by tensor; each form's line names its first
difference (tensor, index, both values). Exit 0: all aligned; 1: a difference; 2: bad input.
``model.image_factor`` is checked against the processor first: with another factor the engines
resize every page to the wrong multiple and the transformers engine refuses to encode.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig

from patentqa.cli import InputError, fail
from patentqa.data.prompts import FORMS, PageImage, Prompt, build_prompt, to_swift_row, to_vllm_request
from patentqa.infer.engine import image_factor, model_dir
from patentqa.models import Family, chat_template_kwargs, family_of
from patentqa.infer.parity import first_difference

TRAINING, INFERENCE, VLLM = "training", "inference", "vllm"
# vLLM normalises pixels as x * (rescale / std) - mean / std, the HF processor as (x * rescale - mean) / std: the
# same pixels differ by float32 rounding (1.2e-7 seen); one grey level apart is rescale / std >= 0.007
VLLM_PIXEL_ATOL = 1e-6
# swift sft flags that decide how processes run, not how a row is encoded
LAUNCH_FLAGS = ("deepspeed", "external_plugins")
QUESTIONS = {"with_context": "在文件中第1页的示意图中，部件1位于部件2的什么位置？",
             "figure_only": "在文件中第1页的示意图中，部件1位于部件2的什么位置？",
             "document": "该专利要解决的技术问题是什么？"}


# --- the prompts ---------------------------------------------------------------------------------

def drawn_page(path: Path, number: int, size: tuple[int, int] = (392, 560), caption: bool = False) -> PageImage:
    """A small drawn patent page: boxes, part numbers and a leader line (varies with ``number``); ``caption``
    adds its figure label (图N). The tests' pages are these too."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    for i in range(3):
        x = 30 + 40 * i + 7 * number
        draw.rectangle([x, 60 + 30 * i, x + 120, 160 + 30 * i], outline="black", width=3)
        draw.text((x + 125, 60 + 30 * i), str(number + i), fill="black")
    draw.line([(10, size[1] - 20), (size[0] - 10, 300 - 9 * number)], fill="black", width=2)
    if caption:
        draw.text((size[0] // 2, size[1] - 40), f"图{number}", fill="black")
    page.save(path)
    return PageImage(number, str(path))


def form_prompts(cfg: DictConfig, pages_dir: Path) -> list[Prompt]:
    """One prompt of each form over three drawn pages, at ``cfg``'s token budgets for its model family."""
    from patentqa.data.build import prompt_config

    config = prompt_config(cfg)
    pages = [drawn_page(pages_dir / f"page{i}.png", i) for i in range(1, 4)]
    asked = {"with_context": pages[0], "figure_only": pages[0], "document": None}
    context = {"with_context": pages[1:], "figure_only": [], "document": pages[1:]}
    return [build_prompt(config, QUESTIONS[form], form, asked[form], context[form]) for form in FORMS]


# --- the three sides -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    """One prompt as one side encodes it."""

    input_ids: list[int]
    image_tokens: list[int]      # image tokens of each image, in order
    image_grid_thw: Any = None   # (images, 3) tensor
    pixel_values: Any = None     # (patches, channels × patch²) tensor


def image_token_runs(ids: list[int], image_token_id: int, image_start_id: Optional[int] = None) -> list[int]:
    """The image tokens of each image in ``ids``: the lengths of the runs of ``image_token_id`` (a Qwen image is
    one run); with ``image_start_id`` (MiniCPM-V's ``<image>``, opening an image's overview and its slices),
    every run from one start token to the next counts to that image."""
    runs: list[int] = []
    previous, new_image = None, True
    for token in ids:
        if token == image_token_id:
            if previous == image_token_id or (image_start_id is not None and runs and not new_image):
                runs[-1] += 1
            else:
                runs.append(1)
                new_image = False
        elif token == image_start_id:
            new_image = True
        previous = token
    return runs


@contextmanager
def environment(extra: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``extra`` set, restored afterwards (swift's arguments and loaders set variables too)."""
    saved = dict(os.environ)
    os.environ.update(extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class SwiftEncoder:
    """Rows encoded as ``swift sft`` encodes its dataset: its template in train mode over ``load_dataset``."""

    args: Any      # swift.SftArguments
    template: Any  # swift's template for args.template, in train mode
    work: Path
    files: int = 0  # row files written: each call reads a new one

    def encode(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``template.encode`` of each SFT row (messages, images, chat_template_kwargs), in order."""
        from swift.dataset import load_dataset

        self.files += 1
        path = self.work / f"rows{self.files}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        dataset, _ = load_dataset([str(path)], **self.args.get_dataset_kwargs())
        return [self.template.encode(row) for row in dataset]


def swift_encoder(flags: dict[str, Any], work: Path, env: Optional[dict[str, str]] = None) -> SwiftEncoder:
    """swift's training-side encoder for ``swift sft`` flags (at least model, model_type, template), built in
    ``env`` (the launch environment's image budget) as ``swift sft`` builds it; loads no weights."""
    from swift import SftArguments

    work.mkdir(parents=True, exist_ok=True)
    placeholder = work / "placeholder.jsonl"  # SftArguments insists on a dataset
    placeholder.write_text(json.dumps({"messages": [{"role": "user", "content": "x"},
                                                    {"role": "assistant", "content": "y"}]}) + "\n")
    flags = {"check_model": False, "tuner_type": "lora", "strict": True, **flags,
             "dataset": [str(placeholder)], "val_dataset": [], "output_dir": str(work / "out"), "add_version": False,
             "report_to": ["none"], "load_from_cache_file": False}
    with environment(env or {}):
        args = SftArguments(**{k: v for k, v in flags.items() if k not in LAUNCH_FLAGS})
        _, processor = args.get_model_processor(load_model=False)
        template = args.get_template(processor)
    template.set_mode("train")
    return SwiftEncoder(args, template, work)


def training_prompt_ids(encoded: dict[str, Any]) -> list[int]:
    """The ids of an encoded SFT row before its first trained-on (labelled) token: the row's prompt."""
    first = next(i for i, label in enumerate(encoded["labels"]) if label != -100)
    return [int(i) for i in encoded["input_ids"][:first]]


def run_encoder(cfg: DictConfig, model_path: str, work: Path) -> SwiftEncoder:
    """The training side of ``cfg``'s run: its rendered ``swift sft`` flags and launch image budget."""
    from patentqa.train.launch import image_budget_env
    from patentqa.train.swift_args import render

    rows = work / "rows.jsonl"
    flags = render(cfg, rows, rows, work / "out", "none", model_path)
    return swift_encoder(flags, work, image_budget_env(cfg))


THINK_ANSWER = "<think>\n推理\n</think>\n\n答案"  # a thinking row's answer: swift labels it from <think> on


def thinking_prompt_ids(encoded: dict[str, Any], think_id: int) -> list[int]:
    """A thinking row's ids through its opening ``<think>`` line (``<think>`` and the newline after it): what
    a thinking template's generation prompt ends with."""
    first = next(i for i, label in enumerate(encoded["labels"]) if label != -100)
    opened = encoded["input_ids"].index(think_id, max(first - 1, 0))
    return [int(i) for i in encoded["input_ids"][:opened + 2]]


def training_side(encoder: SwiftEncoder, prompts: list[Prompt], image_token_id: int,
                  think_id: Optional[int] = None, image_start_id: Optional[int] = None) -> list[Encoded]:
    """What swift trains on for each prompt (its answer is a placeholder; only the prompt part is compared);
    ``think_id``: thinking on, the row answers with a reasoning block (module doc); ``image_start_id``: see
    ``image_token_runs``."""
    out = []
    answer = "答案" if think_id is None else THINK_ANSWER
    for row in encoder.encode([to_swift_row(prompt, answer) for prompt in prompts]):
        ids = training_prompt_ids(row) if think_id is None else thinking_prompt_ids(row, think_id)
        out.append(Encoded(ids, image_token_runs(ids, image_token_id, image_start_id), image_grid(row),
                           row.get("pixel_values")))
    return out


def image_grid(encoded: Any) -> Any:
    """The image grid an encoding carries: Qwen's ``image_grid_thw`` (images, 3), MiniCPM-V's ``target_sizes``
    (overview and slices, 2: patches down and across)."""
    grid = encoded.get("image_grid_thw")
    return grid if grid is not None else encoded.get("target_sizes")


def inference_side(processor: Any, prompts: list[Prompt], factor: int, image_token_id: int, family: Family,
                   template_kwargs: Optional[dict[str, Any]] = None, slices: Any = None,
                   image_start_id: Optional[int] = None) -> list[Encoded]:
    """What the transformers engine feeds the model for each prompt (one prompt a batch: no padding), with the
    family's image arguments (``Family.image_kwargs``; ``slices``: the run's slice settings)."""
    from patentqa.infer.inputs import encode_prompts

    out = []
    for prompt in prompts:
        batch = encode_prompts(processor, [prompt], factor=factor, template_kwargs=template_kwargs,
                               image_kwargs=family.image_kwargs(slices), resize=not family.slicing)
        ids = batch["input_ids"][0].tolist()
        out.append(Encoded(ids, image_token_runs(ids, image_token_id, image_start_id), image_grid(batch),
                           batch.get("pixel_values")))
    return out


def vllm_processor(cfg: DictConfig, model_path: str) -> Any:
    """vLLM's multimodal processor for the model, configured as the vLLM engine configures ``LLM``
    (``llm_kwargs``: dtype, images per prompt, ``mm_processor_kwargs``); starts no engine, loads no weights."""
    from patentqa.config import group_config
    from patentqa.infer.engines.vllm_engine import import_vllm, llm_kwargs

    import_vllm()  # ImportError naming the extra to install
    from vllm.engine.arg_utils import EngineArgs
    from vllm.multimodal import MULTIMODAL_REGISTRY

    infer_cfg = cfg.infer if cfg.infer.name == "vllm" else group_config("infer", "vllm")
    kwargs = llm_kwargs(infer_cfg, cfg.model, None, model_path)
    keys = ("model", "dtype", "limit_mm_per_prompt", "mm_processor_kwargs")  # what decides the processing
    model_config = EngineArgs(**{k: kwargs[k] for k in keys}).create_model_config()
    return MULTIMODAL_REGISTRY.create_processor(model_config)


def vllm_input_norm(mm_processor: Any) -> Callable[[Any, Any], Any]:
    """vLLM's own input normalisation of the model's vision tower: ``norm(pixel_values, dtype)``. vLLM 0.32
    rescales and normalises on the device (``mm_device_do_normalize``, on by default for Qwen-VL), so its
    processor hands over raw uint8 pixels; without that the norm only casts. The op's PyTorch reference
    (``forward_native``) is used, on the op's own device: on CUDA the op dispatches to a Triton kernel that
    cannot take the host tensors compared here, and the reference is what that kernel is tested against."""
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.fusion.mm_input_norm import build_mm_input_norm

    with set_current_vllm_config(VllmConfig()):  # vLLM's ops are built inside a config context
        op = build_mm_input_norm(mm_processor.info.ctx.model_config)
    native = getattr(op, "forward_native", op)  # IdentityInputNorm (a cast) has no dispatch
    device = next(op.buffers(), None)
    device = device.device if device is not None else None

    def norm(pixels: Any, dtype: Any) -> Any:
        return native(pixels.to(device) if device is not None else pixels, dtype).cpu()

    return norm


def sliced_pixels(items: list[Any]) -> tuple[Any, Any]:
    """(target sizes, pixels) of MiniCPM-V images as vLLM holds them, in the HF processor's layout: vLLM splits an
    image's fused (C, 14, Σ width) pixels into its slices, each padded to the widest (``tgt_sizes`` gives each
    one's patches); unpadded and fused again they compare with the HF processor's (1, C, 14, Σ width)."""
    import torch

    sizes, pixels = [], []
    for item in items:
        tgt, data = item["tgt_sizes"].data, item["pixel_values"].data
        for size, part in zip(tgt, data):
            sizes.append(size)
            pixels.append(part[..., :int(size[0] * size[1]) * part.shape[-2]])
    return torch.stack(sizes).to(torch.int32), torch.cat(pixels, dim=-1).unsqueeze(0)


def vllm_side(mm_processor: Any, hf_processor: Any, prompts: list[Prompt], factor: int, family: Family,
              template_kwargs: Optional[dict[str, Any]] = None, image_token_id: Optional[int] = None,
              image_start_id: Optional[int] = None) -> list[Encoded]:
    """What vLLM's processor makes of the request the vLLM engine sends for each prompt; pixels as its vision
    tower normalises them (float32). A slicing family's processor normalises on the host: its pixels are compared
    as they are (``sliced_pixels``), and its image tokens are counted from the ids (``image_token_runs``; a Qwen
    image's are vLLM's placeholder lengths)."""
    import torch

    norm = None if family.slicing else vllm_input_norm(mm_processor)
    out = []
    for prompt in prompts:
        request = to_vllm_request(prompt, hf_processor, factor, template_kwargs, resize=not family.slicing)
        items = mm_processor.info.parse_mm_data(request.get("multi_modal_data") or {})
        result = mm_processor(request["prompt"], items)
        images = list(result["mm_kwargs"].get("image") or [])
        placeholders = result["mm_placeholders"].get("image") or []
        if family.slicing:
            ids = [int(i) for i in result["prompt_token_ids"]]
            grid, pixels = sliced_pixels(images) if images else (None, None)
            out.append(Encoded(ids, image_token_runs(ids, int(image_token_id), image_start_id), grid, pixels))
            continue
        grid = torch.stack([item["image_grid_thw"].data for item in images]) if images else None
        pixels = norm(torch.cat([item["pixel_values"].data for item in images]), torch.float32) if images else None
        out.append(Encoded([int(i) for i in result["prompt_token_ids"]], [int(p.length) for p in placeholders],
                           grid, pixels))
    return out


# --- comparing -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Difference:
    """The first place two sides differ: which tensor, where, and both values."""

    tensor: str
    index: str   # "[i]", "[i, j]" or " shape"
    sides: tuple[str, str]
    values: tuple[str, str]

    def __str__(self) -> str:
        return f"{self.tensor}{self.index}: {self.sides[0]} {self.values[0]} != {self.sides[1]} {self.values[1]}"


def list_difference(tensor: str, a: list[int], b: list[int], sides: tuple[str, str],
                    decode: Optional[Callable[[list[int]], str]] = None) -> Optional[Difference]:
    """The first position where two id or count lists differ (a length difference counts); ``decode`` shows
    a token id's text beside it."""
    index = first_difference(a, b)
    if index is None:
        return None

    def at(values: list[int]) -> str:
        if index >= len(values):
            return "(end)"
        return f"{values[index]} {decode([values[index]])!r}" if decode else str(values[index])

    return Difference(tensor, f"[{index}]", sides, (at(a), at(b)))


def tensor_difference(tensor: str, a: Any, b: Any, sides: tuple[str, str], atol: float = 0.0) -> Optional[Difference]:
    """The first element where two tensors differ by more than ``atol`` (shape and dtype first); None when
    they are equal or both absent."""
    if a is None or b is None:
        return None if a is None and b is None else Difference(
            tensor, "", sides, tuple("absent" if t is None else "present" for t in (a, b)))  # type: ignore[arg-type]
    if tuple(a.shape) != tuple(b.shape):
        return Difference(tensor, " shape", sides, (str(tuple(a.shape)), str(tuple(b.shape))))
    if a.dtype != b.dtype:
        return Difference(tensor, " dtype", sides, (str(a.dtype), str(b.dtype)))
    unequal = ((a - b).abs() > atol if atol else a != b).nonzero()
    if not len(unequal):
        return None
    index = tuple(int(i) for i in unequal[0])
    return Difference(tensor, str(list(index)), sides, (repr(a[index].item()), repr(b[index].item())))


def compare(reference: Encoded, other: Encoded, sides: tuple[str, str], pixel_atol: float = 0.0,
            decode: Optional[Callable[[list[int]], str]] = None) -> Optional[Difference]:
    """The first difference between two encodings: image tokens per image, ids, grids, pixels."""
    return (list_difference("image_tokens", reference.image_tokens, other.image_tokens, sides)
            or list_difference("input_ids", reference.input_ids, other.input_ids, sides, decode)
            or tensor_difference("image_grid_thw", reference.image_grid_thw, other.image_grid_thw, sides)
            or tensor_difference("pixel_values", reference.pixel_values, other.pixel_values, sides, pixel_atol))


@dataclass(frozen=True)
class FormResult:
    """One prompt form: its first difference (None: training == inference == vllm) and its size."""

    form: str
    difference: Optional[Difference]
    ids: int
    image_tokens: list[int]
    budget: int = 0  # the form's visual-token budget an image (prompt.image_tokens)

    def line(self) -> str:
        size = f"{self.ids} ids, image tokens {'+'.join(map(str, self.image_tokens)) or '0'}"
        if self.image_tokens and self.budget:
            size += f" (budget {self.budget} an image)"
        if self.difference is None:
            return f"  {self.form:<13} OK       {size}: {TRAINING} = {INFERENCE} = {VLLM}"
        return f"  {self.form:<13} DIFFERS  {self.difference}"


@dataclass(frozen=True)
class AlignReport:
    """Every form's result, or the factor difference that stops the check before any form."""

    model: str
    forms: list[FormResult]
    factor: Optional[Difference] = None

    @property
    def aligned(self) -> bool:
        return self.factor is None and all(f.difference is None for f in self.forms)

    def first_difference(self) -> Optional[str]:
        """``<form>: <difference>`` of the first misaligned form (or the factor), None when aligned."""
        if self.factor is not None:
            return str(self.factor)
        return next((f"{f.form}: {f.difference}" for f in self.forms if f.difference is not None), None)

    def lines(self) -> list[str]:
        lines = [f"processor alignment, {self.model}: swift training template vs HF processor vs vLLM processor"]
        if self.factor is not None:
            lines.append(f"  {'model':<13} DIFFERS  {self.factor}")
        lines += [form.line() for form in self.forms]
        first = self.first_difference()
        lines.append(f"aligned: {len(self.forms)} of {len(self.forms)} forms" if first is None else
                     f"MISALIGNED: {first}")
        return lines


def factor_difference(cfg: DictConfig, processor: Any) -> Optional[Difference]:
    """``model.image_factor`` against the processor's patch_size × merge_size (pixels a visual token; MiniCPM-V's
    2 × 2 window merger for its merge size)."""
    from patentqa.infer.inputs import processor_factor

    image_processor = processor.image_processor
    actual = processor_factor(image_processor)
    try:
        configured = image_factor(cfg.model)
    except ValueError as error:  # no model.image_factor
        raise InputError(f"model={cfg.model.name}: {error}") from None
    return None if configured == actual else Difference(
        "image_factor", "", ("model.image_factor", "HF processor patch_size x merge_size"),
        (str(configured), f"{actual} ({image_processor.patch_size} x {actual // int(image_processor.patch_size)})"))


def align(cfg: DictConfig) -> AlignReport:
    """Encode every prompt form on the three sides and compare them (module doc)."""
    from transformers import AutoProcessor

    from patentqa.data.build import prompt_config

    path = model_dir(cfg.model)  # builds the tiny model when model.build_tiny
    processor = AutoProcessor.from_pretrained(path)
    name = f"model={cfg.model.name} ({cfg.model.model_type}, template {cfg.model.template})"
    if chat_template_kwargs(cfg.model):
        name += f", thinking {'on' if cfg.model.get('thinking') else 'off'}"
    factor_diff = factor_difference(cfg, processor)
    if factor_diff is not None:
        return AlignReport(name, [], factor_diff)
    factor = image_factor(cfg.model)
    family, slices = family_of(cfg.model), cfg.model.get("slices")
    image_token_id = int(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    start_id = int(processor.tokenizer.convert_tokens_to_ids("<image>")) if family.slicing else None
    with tempfile.TemporaryDirectory(prefix="patentqa-align-") as tmp:
        prompts = form_prompts(cfg, Path(tmp))
        kwargs = chat_template_kwargs(cfg.model)  # enable_thinking for a thinking template: as swift is told
        think_id = int(processor.tokenizer.convert_tokens_to_ids("<think>")) if kwargs.get("enable_thinking") else None
        trained = training_side(run_encoder(cfg, path, Path(tmp) / "swift"), prompts, image_token_id, think_id,
                                start_id)
        inferred = inference_side(processor, prompts, factor, image_token_id, family, kwargs, slices, start_id)
        served = vllm_side(vllm_processor(cfg, path), processor, prompts, factor, family, kwargs, image_token_id,
                           start_id)
    decode = processor.tokenizer.decode
    config = prompt_config(cfg)
    forms = []
    for p, t, i, v in zip(prompts, trained, inferred, served):
        forms.append(FormResult(p.form, compare(t, i, (TRAINING, INFERENCE), decode=decode)
                                or compare(i, v, (INFERENCE, VLLM), VLLM_PIXEL_ATOL, decode),
                                len(i.input_ids), i.image_tokens, config.budget(p.form) // factor ** 2))
    return AlignReport(name, forms)


def main(argv: Optional[list[str]] = None) -> int:
    """Compose the config from Hydra-style overrides, check alignment, print one line per form."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from patentqa.config import compose
    from patentqa.hub import ModelNotFound

    argv = sys.argv[1:] if argv is None else argv
    try:
        report = align(compose(argv))
    except (HydraException, OmegaConfBaseException, ModelNotFound, ImportError, InputError) as error:
        return fail(error)
    print("\n".join(report.lines()))
    return 0 if report.aligned else 1


if __name__ == "__main__":
    sys.exit(main())
