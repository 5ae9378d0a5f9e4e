"""In-process transformers engine: one base model, LoRA checkpoints swapped with peft.

The base model is loaded once. ``generate(..., adapter=DIR)`` attaches the checkpoint's LoRA
weights under a name the first time it is seen (``PeftModel.from_pretrained``, then
``load_adapter`` for further ones) and activates it with ``set_adapter``; ``adapter=None``
runs the base model inside ``disable_adapter()``. Sweeping many checkpoints therefore never
reloads the base and never merges. At most ``infer.max_loaded_adapters`` adapters stay
attached; the least recently used one is dropped (``delete_adapter``) to bound memory.

Prompts are encoded by ``encode_prompts`` (the parity-tested path, left padding), sorted by
length within a call so a batch holds prompts of similar length, and generated in batches of
``infer.batch_size``; outputs come back in the caller's order. Only new tokens are decoded.

``load_base(path, dtype, device)`` (model + processor) is the shared loader for other stages.
"""
from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from patentqa import residency
from patentqa.config import cfg_get
from patentqa.data.prompts import Prompt
from patentqa.device import require_gpu
from patentqa.models import chat_template_kwargs, family_of
from patentqa.infer.engine import Reply, Sampling, Trace, image_factor, model_dir

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto", model: Any = None) -> str:
    """``auto`` → ``auto`` (all GPUs, via accelerate) with CUDA, else ``cpu``; anything else as given.

    Given the ``model`` about to be loaded (its config, dir or id), ``auto`` follows ``model.device`` (the root
    ``device``; cpu = the CPU on purpose) and stops a model that is not tiny from loading on the CPU
    by accident (``patentqa.device.require_gpu`` names the likely cause).
    """
    import torch

    if device == "auto" and model is not None:
        device = str(cfg_get(model, "device", "auto"))
        require_gpu(model, device, stage="transformers engine")
    if device == "auto":
        return "auto" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str = "auto", device: str = "auto") -> Any:
    """A torch dtype: ``auto`` → bfloat16 on a GPU, float32 on CPU; else ``torch.<dtype>``."""
    import torch

    if dtype == "auto":
        return torch.float32 if resolve_device(device) == "cpu" else torch.bfloat16
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (expected auto, float32, bfloat16 or float16)")
    return resolved


def load_base(path: str | Path, dtype: str = "auto", device: str = "auto",
              attn_implementation: str | None = None) -> tuple[Any, Any]:
    """(model in eval mode, processor) of a Qwen2.5-VL checkpoint dir or hub id.

    ``device``: ``auto`` (all GPUs, else CPU), ``cpu``, ``cuda:0``, ...; ``dtype``: ``auto``
    (bf16 on GPU, fp32 on CPU) or a torch dtype name.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device), "device_map": resolve_device(device)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs).eval()
    processor = AutoProcessor.from_pretrained(str(path))
    return model, processor


def _adapter_key(adapter: str) -> tuple[str, int]:
    """Identity of a checkpoint: its resolved dir and the weights' mtime (a rewritten dir reloads)."""
    directory = Path(adapter).resolve()
    if not (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} is not a LoRA checkpoint (no adapter_config.json)")
    weights = [directory / name for name in ("adapter_model.safetensors", "adapter_model.bin")]
    mtime = max((w.stat().st_mtime_ns for w in weights if w.is_file()), default=0)
    return str(directory), mtime


def prompt_length(processor: Any, prompt: Prompt, factor: int = 28,
                  template_kwargs: dict[str, Any] | None = None) -> int:
    """Tokens ``prompt`` encodes to (text + image tokens), from the image headers only (no decode)."""
    from PIL import Image
    from qwen_vl_utils import smart_resize

    from patentqa.infer.inputs import prompt_text

    length = len(processor.tokenizer(prompt_text(processor, prompt, template_kwargs))["input_ids"])
    for image in prompt.images:
        with Image.open(image.path) as page:
            width, height = page.size
        h, w = smart_resize(height, width, factor=factor, min_pixels=image.min_pixels, max_pixels=image.max_pixels)
        length += h * w // (factor * factor) - 1  # the template already holds one <|image_pad|>
    return length


def _complete(decode: Callable[[list[int]], str], ids: list[int]) -> str:
    """The text vLLM's incremental detokenizer ends with for ``ids`` (tokenizers' ``DecodeStream``: text is
    emitted only at a token whose text so far does not end in a replacement character): the decode of the longest
    prefix of ``ids`` that does not end in U+FFFD. So a multi-byte character cut at ``max_new_tokens`` is left out,
    and so is everything after a stray byte when each later token again ends in one (a tiny Qwen3-VL's base model
    repeated such a pair: '…封此不再赯\ufffd此不再…' where vLLM gave '…封'); the tokens are the same."""
    for end in range(len(ids), -1, -1):  # one decode unless the text ends in U+FFFD
        text = decode(ids[:end])
        if not text.endswith("\ufffd"):
            return text
    return ""


@dataclass
class TransformersEngine:
    """Batched generation with one base model and peft-swapped LoRA adapters (see module doc)."""

    model: Any
    processor: Any
    batch_size: int = 8
    factor: int = 28
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # the model's chat-template arguments
    image_kwargs: dict[str, Any] | None = None  # the image processor's (Family.image_kwargs); None: do_resize=False
    forward_kwargs: dict[str, Any] = field(default_factory=dict)  # the model's beside its inputs (Family.generate_kwargs)
    resize: bool = True  # images resized to their budgets first (False: a slicing family's, as the files hold them)
    max_loaded_adapters: int = 4
    name: str = "transformers"
    base_loads: int = 1  # the model passed in was loaded once
    adapter_loads: int = 0
    adapter_deletes: int = 0
    _adapters: OrderedDict[tuple[str, int], str] = field(default_factory=OrderedDict)  # key → peft name, LRU order
    _next_id: int = 0
    _held: residency.Hold | None = field(default=None, repr=False)  # the model slot, from from_config

    @classmethod
    def from_config(cls, infer_cfg: Any, model_cfg: Any) -> TransformersEngine:
        """Load ``model_cfg.path`` once (building the tiny model when ``model.build_tiny``); the model
        takes the process's model slot (patentqa/residency.py) until ``close``."""
        device = resolve_device(str(cfg_get(infer_cfg, "device", "auto")), model_cfg)  # before anything loads
        path = model_dir(model_cfg)
        with residency.loading("transformers", path) as held:  # no other model may be alive
            model, processor = load_base(path, dtype=str(cfg_get(infer_cfg, "dtype", "auto")), device=device,
                                         attn_implementation=cfg_get(infer_cfg, "attn_implementation"))
        family, slices = family_of(model_cfg), cfg_get(model_cfg, "slices", None)
        engine = cls(model=model, processor=processor, batch_size=int(cfg_get(infer_cfg, "batch_size", 8)),
                     factor=image_factor(model_cfg), template_kwargs=chat_template_kwargs(model_cfg),
                     image_kwargs=family.image_kwargs(slices), forward_kwargs=family.generate_kwargs(slices),
                     resize=not family.slicing,
                     max_loaded_adapters=int(cfg_get(infer_cfg, "max_loaded_adapters", 4)))
        engine._held = held.bind(engine)
        return engine

    # --- adapters -------------------------------------------------------------------------------

    @property
    def loaded_adapters(self) -> list[str]:
        """Checkpoint dirs currently attached, least recently used first."""
        return [key[0] for key in self._adapters]

    def _activate(self, adapter: str) -> None:
        """Attach ``adapter`` if new (evicting the least recently used beyond the limit), make it active."""
        from peft import PeftModel

        key = _adapter_key(adapter)
        name = self._adapters.get(key)
        if name is None:
            name = f"adapter_{self._next_id}"
            self._next_id += 1
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(key[0], adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, key[0], adapter_name=name).eval()
            self._adapters[key] = name
            self.adapter_loads += 1
            log.info("attached LoRA adapter %s as %s", key[0], name)
        self._adapters.move_to_end(key)
        self.model.set_adapter(name)
        while len(self._adapters) > max(1, self.max_loaded_adapters):
            _, old = self._adapters.popitem(last=False)
            self.model.delete_adapter(old)
            self.adapter_deletes += 1

    @contextlib.contextmanager
    def _using(self, adapter: str | None) -> Iterator[None]:
        if adapter is not None:
            self._activate(adapter)
            yield
        elif hasattr(self.model, "disable_adapter"):  # a PeftModel: run the base weights
            with self.model.disable_adapter():
                yield
        else:
            yield

    # --- generation -----------------------------------------------------------------------------

    def _generation_config(self, sampling: Sampling) -> Any:
        """Plain greedy (or sampling) settings with the checkpoint's stop tokens; no repetition penalty."""
        from transformers import GenerationConfig

        base = getattr(self.model, "generation_config", None)
        eos = getattr(base, "eos_token_id", None)
        if eos is None:
            eos = self.processor.tokenizer.eos_token_id
        pad = self.processor.tokenizer.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, list) else eos
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "eos_token_id": eos, "pad_token_id": pad,
                                  "num_beams": 1}
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature)
        else:
            kwargs.update(do_sample=False)
        return GenerationConfig(**kwargs)

    def _decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids, skip_special_tokens=True)

    def _generate_batch(self, prompts: list[Prompt], config: Any, top: int = 0) -> list[Any]:
        """Texts of one batch; with ``top`` > 0, ``Trace`` objects (ids cut after the stop token)."""
        import torch

        from patentqa.infer.inputs import encode_prompts

        batch = encode_prompts(self.processor, prompts, factor=self.factor, template_kwargs=self.template_kwargs,
                               image_kwargs=self.image_kwargs, resize=self.resize).to(self.model.device)
        with torch.inference_mode():
            output = self.model.generate(**batch, **self.forward_kwargs, generation_config=config,
                                         output_logits=bool(top),
                                         return_dict_in_generate=bool(top))
        eos = config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [eos])
        if not top:
            new = output[:, batch["input_ids"].shape[1]:]
            return [Reply(_complete(self._decode, ids),
                          truncated=not (stop & set(ids)) and len(ids) >= config.max_new_tokens)
                    for ids in new.tolist()]
        logprobs = torch.stack(output.logits, dim=1).float().log_softmax(dim=-1)  # (batch, steps, vocab)
        best = logprobs.topk(top, dim=-1)
        traces = []
        for row, ids in enumerate(output.sequences[:, batch["input_ids"].shape[1]:].tolist()):
            end = next((i + 1 for i, token in enumerate(ids) if token in stop), len(ids))
            steps = [list(zip(best.indices[row, i].tolist(), best.values[row, i].tolist())) for i in range(end)]
            traces.append(Trace(text=_complete(self._decode, ids[:end]), tokens=ids[:end], top=steps))
        return traces

    def _batched(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None, top: int = 0) -> list[Any]:
        """``_generate_batch`` over length-sorted batches, results in the caller's order."""
        if not prompts:
            return []
        config = self._generation_config(sampling)
        lengths = [prompt_length(self.processor, prompt, self.factor, self.template_kwargs) for prompt in prompts]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        results: list[Any] = [None] * len(prompts)
        size = max(1, self.batch_size)
        with self._using(adapter):
            for start in range(0, len(order), size):
                chunk = order[start:start + size]
                for i, result in zip(chunk, self._generate_batch([prompts[i] for i in chunk], config, top)):
                    results[i] = result
        return results

    def generate(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None) -> list[str]:
        """One answer per prompt, in order; ``adapter`` a LoRA checkpoint dir (None: the base model)."""
        return self._batched(prompts, sampling, adapter)

    def generate_traced(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None,
                        top: int = 2) -> list[Trace]:
        """Like ``generate``, with token ids and the top-``top`` log-probabilities of every position."""
        return self._batched(prompts, sampling, adapter, top=max(1, top))

    def close(self) -> None:
        """Drop the model and release its model slot (``gc.collect()``, ``torch.cuda.empty_cache()``)."""
        self.model = None
        self._adapters.clear()
        if self._held is not None:
            self._held.release()
            self._held = None
        else:
            residency.free_memory()

    def __enter__(self) -> TransformersEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
