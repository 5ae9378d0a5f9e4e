"""Cross-engine parity: the same prompts and checkpoint give the same greedy tokens in transformers and vLLM.

    python -m patentqa.infer.parity run_dir=RUN [checkpoints=2] [per_form=4] [max_new_tokens=16]

Prompts are the run's dev prompts (up to ``per_form`` of each prompt form, images included)
plus the pipeline's two text-only calls (the seed's classifier and style prompts). Each target
(the base model and ``checkpoints`` of the run's LoRA checkpoints, the last one included) is
answered greedily by both engines from one loaded base model each: peft adapter swap in
transformers, a ``LoRARequest`` per checkpoint in vLLM. One model is alive at a time
(patentqa/residency.py): transformers answers every target and is closed before vLLM starts. Where the token ids differ, the report
gives the first differing position and both engines' logit margins there (best minus
second-best log-probability; a margin near 0 is a near-tie that rounding may flip).

A full fine-tuning checkpoint is loaded as the model by both engines (no adapter).
Writes ``RUN/eval/parity.json``; exits 1 when any answer differs. A LoRA that vLLM mounts
without effect (ms-swift#4725) or a prompt one engine renders differently shows up here.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from patentqa.cli import InputError, fail, run_config_file
from patentqa.data.prompts import Prompt, classifier_prompt, prompt_from_json, style_prompt
from patentqa.infer.engine import Sampling, Trace
from patentqa.tracking import Checkpoint, checkpoints, read_jsonl, write_json_atomic

BASE = "base"


@dataclass(frozen=True)
class ParityCase:
    """One prompt answered by both engines for one target (base model or checkpoint)."""

    target: str
    index: int
    form: str
    identical: bool  # same token ids and the same decoded text
    first_diff: Optional[int]  # first generated position whose token differs (None: same tokens)
    transformers_text: str
    vllm_text: str
    transformers_tokens: list[int]
    vllm_tokens: list[int]
    transformers_margin: Optional[float]  # best - second-best log-probability at first_diff
    vllm_margin: Optional[float]


def first_difference(a: list[int], b: list[int]) -> Optional[int]:
    """First position where two token sequences differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(target: str, index: int, form: str, ours: Trace, theirs: Trace) -> ParityCase:
    """The parity case of one prompt: ``ours`` from transformers, ``theirs`` from vLLM."""
    diff = first_difference(ours.tokens, theirs.tokens)
    return ParityCase(target=target, index=index, form=form, identical=diff is None and ours.text == theirs.text,
                      first_diff=diff,
                      transformers_text=ours.text, vllm_text=theirs.text, transformers_tokens=ours.tokens,
                      vllm_tokens=theirs.tokens,
                      transformers_margin=None if diff is None else ours.margin(diff),
                      vllm_margin=None if diff is None else theirs.margin(diff))


def collect_traces(engine: Any, prompts: list[Prompt], targets: list[tuple[str, Optional[str]]],
                   sampling: Sampling) -> dict[str, list[Trace]]:
    """One engine's greedy traces of every prompt for every (name, adapter dir or None) target."""
    return {name: engine.generate_traced(prompts, sampling, adapter) for name, adapter in targets}


def compare_traces(ours: dict[str, list[Trace]], theirs: dict[str, list[Trace]],
                   prompts: list[Prompt]) -> list[ParityCase]:
    """The parity cases of every target: ``ours`` from transformers, ``theirs`` from vLLM."""
    return [compare(name, i, p.form, a, b) for name in ours
            for i, (p, a, b) in enumerate(zip(prompts, ours[name], theirs[name]))]


def check_parity(ours: dict[str, list[Trace]], theirs: dict[str, list[Trace]], prompts: list[Prompt],
                 sampling: Sampling) -> dict[str, Any]:
    """The parity report of two engines' traces (``collect_traces``), collected one engine at a time."""
    return summarize(compare_traces(ours, theirs, prompts), sampling)


def summarize(cases: list[ParityCase], sampling: Sampling) -> dict[str, Any]:
    """Counts by target and by form, and every case."""
    def counts(key: str) -> dict[str, dict[str, int]]:
        total, same = Counter(getattr(c, key) for c in cases), Counter(getattr(c, key) for c in cases if c.identical)
        return {k: {"identical": same[k], "total": n} for k, n in total.items()}

    identical = sum(c.identical for c in cases)
    return {"identical": identical, "total": len(cases), "all_identical": identical == len(cases),
            "max_new_tokens": sampling.max_new_tokens, "by_target": counts("target"), "by_form": counts("form"),
            "differences": [asdict(c) for c in cases if not c.identical], "cases": [asdict(c) for c in cases]}


def format_report(report: dict[str, Any]) -> str:
    """A few lines for the console: the totals, per target and form, then each difference."""
    lines = [f"parity transformers vs vllm: {report['identical']}/{report['total']} greedy answers identical "
             f"(max_new_tokens {report['max_new_tokens']})"]
    for key in ("by_target", "by_form"):
        lines.append(f"  {key[3:]:>6}: " + ", ".join(f"{k} {v['identical']}/{v['total']}"
                                                     for k, v in report[key].items()))
    for case in report["differences"]:
        lines.append(f"  DIFFERS {case['target']} prompt {case['index']} ({case['form']}) at token {case['first_diff']}: "
                     f"margins transformers {_num(case['transformers_margin'])} vllm {_num(case['vllm_margin'])}; "
                     f"{case['transformers_text']!r} vs {case['vllm_text']!r}")
    return "\n".join(lines)


def _num(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def parity_prompts(eval_file: Path, per_form: int) -> list[Prompt]:
    """Up to ``per_form`` prompts of each form of an evaluation set, plus a classifier and a style prompt."""
    chosen: list[Prompt] = []
    taken: Counter = Counter()
    first_question, first_style = None, []
    for record in read_jsonl(eval_file):
        prompt = prompt_from_json(record["prompt"])
        first_question = first_question or record["question"]
        first_style = first_style or record.get("style_answers") or []
        if taken[prompt.form] < per_form:
            taken[prompt.form] += 1
            chosen.append(prompt)
    if first_question is None:
        raise ValueError(f"{eval_file} holds no questions")
    return chosen + [classifier_prompt(first_question), style_prompt(first_style[0] if first_style else "左侧",
                                                                     first_style)]


def pick_checkpoints(found: list[Checkpoint], n: int) -> list[Checkpoint]:
    """``n`` checkpoints spread over the run, the last included (``n`` <= 0: all)."""
    if n <= 0 or n >= len(found):
        return found
    step = (len(found) - 1) / max(1, n - 1) if n > 1 else 0
    picks = sorted({round(len(found) - 1 - i * step) for i in range(n)})
    return [found[i] for i in picks]


@dataclass
class ParityArgs:
    """``python -m patentqa.infer.parity`` arguments."""

    run_dir: str = MISSING          # a training run (its config.yaml, checkpoints and dataset)
    checkpoints: int = 2            # checkpoints besides the base model (spread, last included); 0 = all
    base: bool = True               # also the base model (and adapters on it); false: full checkpoints only
    per_form: int = 4               # dev prompts of each prompt form
    max_new_tokens: int = 16
    tensor_parallel_size: int = 1   # vLLM's; 2 on this 2-core CPU works too
    kv_cache_gib: Optional[float] = None  # vLLM's KV cache fixed at this (a GPU: kv_cache_memory_bytes; a CPU: its KV
                                    # space), so the blocks it allocates (report kv_cache) compare with the inference
                                    # plan exactly (gpu-check: 1); None: vLLM sizes it (a 32B run needs > 1 GiB for 8k)
    out: Optional[str] = None       # default RUN/eval/parity.json


def engine_configs(cfg: DictConfig, tensor_parallel_size: int,
                   kv_cache_gib: float | None = None) -> tuple[DictConfig, DictConfig]:
    """(transformers, vllm) infer configs: the group defaults, both in the dtype vLLM serves the run's model in
    (``serve_dtype``: its torch_dtype, or bfloat16 where vLLM takes nothing else), CPU-sized for vLLM, its KV cache
    fixed at ``kv_cache_gib`` when given."""
    import torch

    from patentqa.config import group_config
    from patentqa.infer.engines.vllm_engine import serve_dtype

    hf = group_config("infer", "transformers")
    hf.dtype = serve_dtype(cfg.model)
    vllm = group_config("infer", "vllm")
    vllm.tensor_parallel_size = tensor_parallel_size
    vllm.max_model_len = min(int(vllm.max_model_len), 8192)
    if kv_cache_gib is not None and torch.cuda.is_available():
        vllm.kv_cache_memory_bytes = int(kv_cache_gib * 1024 ** 3)
    elif kv_cache_gib is not None:
        vllm.cpu_kvcache_gib = kv_cache_gib
    return hf, vllm


def kv_cache_of(engine: Any) -> dict[str, int] | None:
    """The KV cache a vLLM engine allocated (its blocks of ``block_size`` tokens); None for another engine."""
    llm = getattr(engine, "llm", None)
    if llm is None:
        return None
    cache = llm.llm_engine.vllm_config.cache_config
    return {"blocks": int(cache.num_gpu_blocks), "block_size": int(cache.block_size),
            "tokens": int(cache.num_gpu_blocks) * int(cache.block_size)}


def parity_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """The run's complete checkpoints; ``InputError`` when it has none."""
    found = checkpoints(run_dir / "swift")
    if not found:
        raise InputError(f"{run_dir / 'swift'}: no complete checkpoint (checkpoint-N with trainer_state.json): "
                         "nothing of this run to compare")
    return found


def run_parity(args: ParityArgs) -> dict[str, Any]:
    """Both engines for the run, one after the other (never both loaded), compared; writes the report."""
    from patentqa.data.build import build_dataset
    from patentqa.infer.engines import full_checkpoint_model, make_engine

    from patentqa.infer.engines.vllm_engine import check_tower_lora
    from patentqa.infer.lora_probe import check_linear_attention_lora

    run_dir = Path(args.run_dir)
    cfg = OmegaConf.load(run_config_file(run_dir))  # InputError for a dir that is no training run
    picked = pick_checkpoints(parity_checkpoints(run_dir), args.checkpoints)
    adapters = [(c.path.name, str(c.path)) for c in picked if not c.full]
    hf_cfg, vllm_cfg = engine_configs(cfg, args.tensor_parallel_size, args.kv_cache_gib)
    for _, adapter in adapters:  # an adapter vLLM would refuse: said before the data stage or any model loads
        check_tower_lora(adapter, bool(vllm_cfg.get("tower_lora", False)))
        check_linear_attention_lora(adapter, cfg.model)
    build = build_dataset(cfg)
    prompts = parity_prompts(build.out_dir / "dev_eval.jsonl", args.per_form)
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    # one pair of engines for the base model and its adapters, one pair per full checkpoint (its own weights)
    groups = [(cfg.model, [(BASE, None)] + adapters)] if args.base or adapters else []
    groups += [(full_checkpoint_model(cfg.model, c.path), [(c.path.name, None)])
               for c in picked if c.full]
    cases: list[ParityCase] = []
    kv_cache = None
    for model, targets in groups:  # one model alive at a time: transformers' traces first, then vLLM's
        with closing(make_engine(hf_cfg, model)) as hf:
            ours = collect_traces(hf, prompts, targets, sampling)
        with closing(make_engine(vllm_cfg, model, [adapter for _, adapter in targets if adapter])) as vllm:
            theirs = collect_traces(vllm, prompts, targets, sampling)
            kv_cache = kv_cache or kv_cache_of(vllm)
        cases += compare_traces(ours, theirs, prompts)
    report = summarize(cases, sampling)
    report.update(run_dir=str(run_dir), prompts=len(prompts), targets=[t for _, ts in groups for t, _ in ts],
                  full_checkpoints=sum(c.full for c in picked), tensor_parallel_size=args.tensor_parallel_size,
                  kv_cache=kv_cache, vllm={k: vllm_cfg.get(k) for k in ("max_model_len", "max_num_seqs",
                                                                         "kv_cache_memory_bytes", "cpu_kvcache_gib")})
    write_json_atomic(Path(args.out) if args.out else run_dir / "eval" / "parity.json", report)
    return report


def main(argv: list[str] | None = None) -> int:
    from patentqa.cli import parse_args

    try:
        report = run_parity(parse_args(ParityArgs, argv))
    except InputError as error:
        return fail(error)
    print(format_report(report))
    return exit_status(report)


def exit_status(report: dict[str, Any]) -> int:
    """The command's exit status: 0 when every answer is identical across the engines, else 1."""
    return 0 if report["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
