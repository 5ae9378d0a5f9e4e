"""The equivalence check of a merge: base + adapter (peft) vs the merged model, the same greedy tokens.

``check_equivalence(base, adapter_dir, merged_dir, prompts)`` loads base + adapter and the merged model one
after the other, runs greedy generation on the prompts, batched through ``encode_prompts`` (left padding), and
compares. Generated token ids must be identical and the first-step logits within ``atol + rtol * max |logit|``
(defaults by dtype). The base and merged processors must encode the prompts identically, too. The adapter's
own effect (max |adapter - base| first-step logits) is reported, with a warning when it is within the
tolerance: a merge check of an adapter that changes nothing proves nothing.

The prompts it runs on: ``load_prompts`` (the first K of an evaluation JSONL) or ``synthetic_prompts``
(K figure questions over drawn pages). ``patentqa.train.merge`` exports the merge and runs this check.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from patentqa import residency
from patentqa.data.prompts import PageImage, Prompt, PromptConfig, build_prompt, prompt_from_json
from patentqa.infer.engines.transformers_engine import resolve_device

# First-step logit tolerance (atol, rtol) by the dtype both models run in: the logits pass when
# max |adapter - merged| <= atol + rtol * max |adapter logit|. In fp32 the two only differ in the
# order of additions (W x + s B A x vs (W + s B A) x); in half precision the merged weights are
# rounded, so allow about 4 ulps of the largest logit (a bf16 ulp at logit 32 is 0.25).
DEFAULT_TOLERANCE: dict[str, tuple[float, float]] = {
    "float32": (1e-3, 1e-5),
    "float16": (1e-2, 4 * 2.0**-11),
    "bfloat16": (1e-2, 4 * 2.0**-8),
}


class MergeError(RuntimeError):
    """The merge or its check could not be made or is incomplete (not a numerical mismatch)."""


# --- results ---------------------------------------------------------------------------------

@dataclass
class PromptResult:
    """One prompt: greedy tokens of both models and how far their first-step logits are apart."""

    index: int
    equal: bool
    first_diff: Optional[int]  # first generated position where the tokens differ
    adapter_tokens: list[int]
    merged_tokens: list[int]
    adapter_text: str
    merged_text: str
    max_logit_diff: float  # first step
    adapter_effect: float  # max |adapter - base| first-step logits
    base_first_token: Optional[int]  # the base model's greedy first token (adapter disabled)


@dataclass
class Equivalence:
    """Result of ``check_equivalence``."""

    base_model: str
    adapter_dir: str
    merged_dir: str
    k: int
    max_new_tokens: int
    min_new_tokens: int
    dtype: str
    atol: float
    rtol: float
    logit_scale: float  # max |adapter first-step logit|
    tolerance: float  # atol + rtol * logit_scale
    max_logit_diff: float  # first step, all prompts
    max_logit_diff_prefix: float  # every step while both models generated the same tokens
    adapter_effect: float  # max |adapter - base| first-step logits, all prompts
    adapter_changes_first_token: int  # prompts whose greedy first token the adapter changes
    input_diffs: list[str]  # encoded inputs the base and merged processors disagree on
    prompts: list[PromptResult]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    @property
    def equivalent(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        """Human-readable reasons the merged model is not the adapter model (empty when equal)."""
        problems = []
        if self.input_diffs:
            problems.append(f"the merged dir's processor encodes the prompts differently from the base model's "
                            f"({', '.join(self.input_diffs)})")
        for result in self.prompts:
            if not result.equal:
                problems.append(f"prompt {result.index}: generated tokens differ from position {result.first_diff}: "
                                f"adapter {result.adapter_tokens} {result.adapter_text!r} vs "
                                f"merged {result.merged_tokens} {result.merged_text!r}")
        if not self.max_logit_diff <= self.tolerance:  # also catches NaN
            worse = [r.index for r in self.prompts if not r.max_logit_diff <= self.tolerance]
            problems.append(f"first-step logits differ by up to {self.max_logit_diff:.3g} > tolerance "
                            f"{self.tolerance:.3g} (atol {self.atol:g} + rtol {self.rtol:g} * max |logit| "
                            f"{self.logit_scale:.3g}; {self.dtype}) on prompts {worse}")
        return problems



# --- prompts ---------------------------------------------------------------------------------------

def load_prompts(path: Path, k: int) -> list[Prompt]:
    """The first ``k`` prompts of an evaluation JSONL whose records carry ``"prompt"`` (prompt_to_json)."""
    prompts = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if len(prompts) == k:
                break
            record = json.loads(line) if line.strip() else {}
            if "prompt" in record:
                prompts.append(prompt_from_json(record["prompt"]))
    if not prompts:
        raise MergeError(f"{path} holds no records with a \"prompt\"")
    missing = [image.path for prompt in prompts for image in prompt.images if not Path(image.path).is_file()]
    if missing:
        raise MergeError(f"{len(missing)} page image(s) of the prompts in {path} are missing, e.g. {missing[:3]}")
    return prompts


def synthetic_prompts(k: int, out_dir: Path, size: int = 280) -> list[Prompt]:
    """``k`` figure questions over small drawn pages (for tests, when no evaluation set is given)."""
    from PIL import Image, ImageDraw

    config = PromptConfig(name="seed_b", max_pixels={"with_context": size * size, "figure_only": size * size})
    prompts = []
    for i in range(k):
        page = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(page)
        draw.rectangle([20 + 9 * i, 30, 120 + 9 * i, 130], outline="black", width=3)
        draw.line([(10, size - 10), (size - 10, 200 - 8 * i)], fill="black", width=2)
        draw.text((30, 200), str(i + 1), fill="black")
        path = out_dir / f"page{i + 1}.png"
        page.save(path)
        question = f"在文件中第{i + 1}页的示意图中，部件{i + 1}位于部件{i + 2}的什么位置？"
        prompts.append(build_prompt(config, question, "figure_only", PageImage(i + 1, str(path)), []))
    return prompts


# --- the check ------------------------------------------------------------------------------------

@dataclass
class _Run:
    tokens: list[list[int]]  # generated ids per prompt, cut after the first stop token
    step_logits: list[Any]  # per step: (K, vocab) float32 on CPU; NaN rows where a batch had stopped


def _dtype_name(merged_dir: Path, dtype: str) -> str:
    if dtype != "auto":
        return dtype
    config = json.loads((merged_dir / "config.json").read_text(encoding="utf-8"))
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def _cut(ids: list[int], stop: set[int]) -> list[int]:
    for i, token in enumerate(ids):
        if token in stop:
            return ids[: i + 1]
    return ids


def _generate(model: Any, batches: list[Any], generation_config: Any, stop: set[int]) -> _Run:
    """Greedy generation over ``batches``, keeping every step's raw logits."""
    import torch

    tokens: list[list[int]] = []
    steps: list[list[Any]] = []
    with torch.inference_mode():
        for batch in batches:
            batch = batch.to(model.device)
            out = model.generate(**batch, generation_config=generation_config)
            tokens += [_cut(ids, stop) for ids in out.sequences[:, batch["input_ids"].shape[1]:].tolist()]
            steps.append([logits.float().cpu() for logits in out.logits])
    n_steps = max(len(s) for s in steps)
    step_logits = [torch.cat([s[i] if i < len(s) else torch.full_like(s[0], float("nan")) for s in steps])
                   for i in range(n_steps)]
    return _Run(tokens=tokens, step_logits=step_logits)


def _input_diffs(a: Any, b: Any) -> list[str]:
    """Keys of two encoded batches that differ (missing, shape or values)."""
    keys = sorted(set(a.keys()) | set(b.keys()))
    return [key for key in keys if key not in a or key not in b or a[key].shape != b[key].shape
            or not bool((a[key] == b[key]).all())]


def _encode(base_path: str | Path, merged_dir: Path, prompts: list[Prompt], batch_size: int
            ) -> tuple[Any, list[Any], list[str]]:
    """(merged processor, batches it encodes, input keys the base processor encodes differently)."""
    from transformers import AutoConfig, AutoProcessor

    from patentqa.infer.inputs import encode_prompts, processor_factor
    from patentqa.models import family

    processor = AutoProcessor.from_pretrained(merged_dir)
    base_processor = AutoProcessor.from_pretrained(base_path)
    # the base model family's pixels a side of one visual token (28 Qwen2.5-VL, 32 Qwen3-VL): pages are resized
    # to multiples of it, as in training; a merged processor with another factor fails encode_prompts' check. A
    # slicing family (MiniCPM-V) is given its images as they are, at its processor's default slicing
    base_family = family(AutoConfig.from_pretrained(base_path).model_type)
    factor = processor_factor(base_processor.image_processor)
    kwargs = {"image_kwargs": base_family.image_kwargs(None), "resize": not base_family.slicing}
    chunks = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    batches = [encode_prompts(processor, chunk, factor, **kwargs) for chunk in chunks]
    diffs = sorted({key for batch, chunk in zip(batches, chunks)
                    for key in _input_diffs(batch, encode_prompts(base_processor, chunk, factor, **kwargs))})
    return processor, batches, diffs


def _generation_settings(base_path: str | Path, merged_dir: Path, processor: Any, max_new_tokens: int,
                         min_new_tokens: int) -> tuple[Any, set[int], list[str]]:
    """Greedy settings both models share (the merged model's stop tokens), and config warnings."""
    from transformers import GenerationConfig

    merged_gen = GenerationConfig.from_pretrained(merged_dir)
    base_gen = GenerationConfig.from_pretrained(base_path)
    warnings = [f"generation_config {key}: base {getattr(base_gen, key, None)} vs merged {getattr(merged_gen, key, None)}"
                for key in ("eos_token_id", "pad_token_id", "bos_token_id")
                if getattr(merged_gen, key, None) != getattr(base_gen, key, None)]
    eos = merged_gen.eos_token_id if merged_gen.eos_token_id is not None else processor.tokenizer.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos])
    pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else min(stop)
    greedy = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                              min_new_tokens=min_new_tokens, eos_token_id=sorted(stop), pad_token_id=pad,
                              output_logits=True, return_dict_in_generate=True)
    return greedy, stop, warnings


def _compare(adapter: _Run, merged: _Run, base: _Run, decode: Any) -> tuple[list[PromptResult], float]:
    """Per-prompt results, and the max logit diff over all steps where both made the same choices."""
    first = (adapter.step_logits[0] - merged.step_logits[0]).abs().amax(dim=-1)
    effect = (adapter.step_logits[0] - base.step_logits[0]).abs().amax(dim=-1)
    results, prefix_diff = [], 0.0
    for i, (a, m) in enumerate(zip(adapter.tokens, merged.tokens)):
        first_diff = next((j for j, (x, y) in enumerate(zip(a, m)) if x != y), None)
        if first_diff is None and len(a) != len(m):
            first_diff = min(len(a), len(m))
        shared = len(a) if first_diff is None else first_diff + 1  # step j's logits follow the same j tokens
        for step in range(min(shared, len(adapter.step_logits), len(merged.step_logits))):
            diff = float((adapter.step_logits[step][i] - merged.step_logits[step][i]).abs().max())
            prefix_diff = diff if diff != diff else max(prefix_diff, diff)  # NaN sticks
        results.append(PromptResult(index=i, equal=first_diff is None, first_diff=first_diff, adapter_tokens=a,
                                    merged_tokens=m, adapter_text=decode(a), merged_text=decode(m),
                                    max_logit_diff=float(first[i]), adapter_effect=float(effect[i]),
                                    base_first_token=base.tokens[i][0] if base.tokens[i] else None))
    return results, prefix_diff


def check_equivalence(base_path: str | Path, adapter_dir: Path, merged_dir: Path, prompts: list[Prompt],
                      max_new_tokens: int = 16, atol: Optional[float] = None, rtol: Optional[float] = None,
                      dtype: str = "auto", device_map: str = "auto", batch_size: int = 8,
                      min_new_tokens: int = 0) -> Equivalence:
    """Greedy tokens and first-step logits of base + adapter (peft) vs the merged model on ``prompts``.

    Both models run in ``dtype`` ("auto": the merged config's dtype) with the same greedy settings
    and stop tokens, one model in memory at a time. Logits pass when
    ``max |adapter - merged| <= atol + rtol * max |adapter logit|`` (defaults by dtype).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    start = time.perf_counter()
    dtype_name = _dtype_name(merged_dir, dtype)
    default_atol, default_rtol = DEFAULT_TOLERANCE.get(dtype_name, DEFAULT_TOLERANCE["bfloat16"])
    atol = default_atol if atol is None else float(atol)
    rtol = default_rtol if rtol is None else float(rtol)
    load = {"dtype": getattr(torch, dtype_name), "device_map": resolve_device(device_map)}
    processor, batches, input_diffs = _encode(base_path, merged_dir, prompts, batch_size)
    greedy, stop, warnings = _generation_settings(base_path, merged_dir, processor, max_new_tokens, min_new_tokens)
    timings = {"encode_s": time.perf_counter() - start}

    tick = time.perf_counter()
    with residency.holding("transformers", str(adapter_dir)):  # one model in memory at a time, each released
        model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_path, **load),
                                          str(adapter_dir)).eval()
        timings["load_adapter_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        adapter = _generate(model, batches, greedy, stop)
        timings["generate_adapter_s"] = time.perf_counter() - tick
        with model.disable_adapter():  # the base model's first step: how much the adapter changes
            base = _generate(model, batches, _one_step(greedy), stop)
        del model

    tick = time.perf_counter()
    with residency.holding("transformers", str(merged_dir)):
        model = AutoModelForImageTextToText.from_pretrained(merged_dir, **load).eval()
        timings["load_merged_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        merged = _generate(model, batches, greedy, stop)
        timings["generate_merged_s"] = time.perf_counter() - tick
        del model

    results, prefix_diff = _compare(adapter, merged, base, processor.tokenizer.decode)
    logit_scale = float(adapter.step_logits[0].abs().max())
    tolerance = atol + rtol * logit_scale
    adapter_effect = max(r.adapter_effect for r in results)
    if not adapter_effect > tolerance:
        warnings.append(f"the adapter barely changes the model (max |adapter - base| first-step logit "
                        f"{adapter_effect:.3g} <= tolerance {tolerance:.3g}): this check cannot tell a merge "
                        "from no merge")
    timings["check_s"] = time.perf_counter() - start
    return Equivalence(base_model=str(base_path), adapter_dir=str(adapter_dir), merged_dir=str(merged_dir),
                       k=len(prompts), max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                       dtype=dtype_name, atol=atol, rtol=rtol, logit_scale=logit_scale, tolerance=tolerance,
                       max_logit_diff=_nanmax([r.max_logit_diff for r in results]),
                       max_logit_diff_prefix=prefix_diff, adapter_effect=adapter_effect,
                       adapter_changes_first_token=sum(r.base_first_token != (r.adapter_tokens or [None])[0]
                                                       for r in results),
                       input_diffs=input_diffs, prompts=results, timings=timings, warnings=warnings)


def _one_step(config: Any) -> Any:
    one = copy.deepcopy(config)
    one.max_new_tokens, one.min_new_tokens = 1, min(config.min_new_tokens or 0, 1)  # same stop suppression
    return one


def _nanmax(values: list[float]) -> float:
    return float("nan") if any(v != v for v in values) else max(values)
