"""The first command on a GPU node: the tiny model through every path a real run takes, on this node.

    python -m patentqa.gpucheck [out_dir=gpucheck] [form=auto] [gpus=0]
    make gpu-check

Each check runs one of patentqa's own commands as a subprocess (its log in ``OUT/logs/``), so
what passes here is the path ``+exp=lora_r8`` takes, minus the 32B weights and the hour of
download:

- ``environment``: torch's CUDA build, the GPUs it sees, the NVIDIA driver found and the one that build needs,
  vLLM's platform (GPU form: CUDA, not CPU);
- ``sft_1_rank``: a LoRA ``swift sft`` of the tiny model in one process (one GPU);
- ``sft_zero3_N_ranks``: the same through torchrun + DeepSpeed ZeRO-3 on N ranks (every GPU);
- ``parity_vllm_lora``: the 1-rank run's base model and checkpoint answered by transformers and by
  vLLM with a ``LoRARequest``: the same greedy tokens (``patentqa.infer.parity``); and the KV cache vLLM allocated
  (1 GiB, fixed) is the one the dry run's inference plan computes, block for block;
- ``linear_attention_lora``: the tiny Qwen3.5 (hybrid): does this vLLM apply an adapter on the linear-attention
  projections as peft does (``patentqa.infer.lora_probe``; a public report says it does not on GPUs)? The
  verdict is kept for this vLLM and platform: after a failure the vLLM engine refuses such adapters, naming
  the modules, until a later probe passes;
- ``align_MODEL``, for each tiny family (``families``): ``patentqa.infer.align`` at the smoke budgets: swift's
  template, the HF processor and vLLM's processor (its input norm as vLLM runs it on this device) build the same
  ids, image tokens, grids and pixels;
- ``lora_parity_MODEL``, for each tiny family but Qwen2.5-VL's (``parity_vllm_lora`` checks its trained adapter):
  ``patentqa.infer.lora_probe target=language``: a random adapter on
  every linear layer of the language model, transformers + peft then vLLM with a ``LoRARequest``, in the dtype vLLM
  serves (bf16 on a GPU): the same greedy tokens, a near-tie shown with its margin;
- ``grpo_vllm_colocate``: the 1-rank run's checkpoints swept on dev, then GRPO from its best for a few steps with
  rollouts by vLLM inside the training process (``use_vllm``, ``vllm_mode=colocate``, asleep while training:
  ``sleep_level=1``; the GPU form only: vLLM's sleep mode needs CUDA, so the CPU form samples with transformers);
- ``one_model_at_a_time``: the load/release record of every check from the parity run on
  (``PATENTQA_RESIDENCY_LOG``) never shows two models alive at once.

``form=cpu`` runs the same checks on this machine's CPU (2 ranks of ``launcher=cpu_zero3``); the
tests run that form. ``form=auto``: gpu when torch sees a GPU. Prints a pass/fail table and
writes ``OUT/gpucheck.json``; exits 1 when any check fails. When one fails, its log says why;
README ("On your GPU node") lists the usual causes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from patentqa.tracking import write_json_atomic


@dataclass
class GpuCheckArgs:
    """``python -m patentqa.gpucheck`` arguments."""

    out_dir: str = "gpucheck"   # runs, logs and gpucheck.json (a rerun starts it afresh)
    form: str = "auto"          # gpu | cpu | auto (gpu when torch sees a GPU)
    gpus: int = 0               # ranks of the ZeRO-3 check; 0 = every visible GPU (2 on a CPU)
    steps: int = 2              # optimizer steps of each sft check (a checkpoint every step)
    timeout_s: int = 900        # per check
    families: list[str] = field(default_factory=lambda: ["all"])  # the align / lora_parity rows' tiny models: [all]
                                                                  # (TINY_FAMILIES), a list ([tiny_qwen2_vl]) or []
    grpo: bool = True           # the grpo_vllm_colocate row


TINY_FAMILIES = ("tiny", "tiny_qwen3_vl", "tiny_qwen3_5", "tiny_qwen2_vl", "tiny_minicpm_v_4_6")  # one a family
SFT_MODEL = "tiny"  # the smoke experiment's model: the sft and parity rows train it and check its trained LoRA


@dataclass
class Check:
    """One row of the table."""

    name: str
    passed: bool
    seconds: float
    detail: str
    log: Optional[str] = None


@dataclass
class Context:
    """What the checks share: where they write, which form, how many ranks, the run dirs made so far."""

    out: Path
    form: str
    ranks: int
    steps: int
    timeout_s: int
    runs: dict[str, Path] = field(default_factory=dict)

    @property
    def residency_log(self) -> Path:
        return self.out / "residency.jsonl"


def environment_check(ctx: Context) -> tuple[bool, str]:
    """torch's build and devices, vLLM's platform; on the GPU form, the causes ``patentqa.device`` names."""
    import torch

    from patentqa.device import GPU_INSTALL, driver_report, driver_version, gpu_problem

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        from vllm.platforms import current_platform as platform
    except Exception as error:  # noqa: BLE001 - any import failure is the finding
        platform = None
        platform_name = f"not importable ({type(error).__name__}: {str(error).splitlines()[0][:80]})"
    else:
        platform_name = type(platform).__name__
    detail = (f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}), {gpus} GPU(s) visible, "
              f"{driver_report(torch.version.cuda, driver_version())}, vLLM platform {platform_name}")
    if ctx.form == "cpu":
        return True, detail
    cause = gpu_problem(platform)
    problems = [cause] if cause else []
    if platform is None:
        problems.append(f"vLLM does not import: install the GPU set in a fresh venv ({GPU_INSTALL})")
    if gpus and gpus < ctx.ranks:
        problems.append(f"{ctx.ranks} ranks asked, {gpus} GPU(s) visible")
    return not problems, detail + ("; " + "; ".join(problems) if problems else "")


def train_overrides(ctx: Context, name: str) -> list[str]:
    """The smoke experiment cut to a few steps, a checkpoint every step, no sweep, no W&B."""
    return ["+exp=smoke", f"paths.root={ctx.out}", "data.synth.n_docs=4", "logger=none",
            f"train.max_steps={ctx.steps}", "train.save_steps=1", f"train.eval_steps={ctx.steps}",
            "eval.after_train=false", f"name=gpucheck_{name}", f"hydra.run.dir={ctx.out / 'runs' / name}"]


def sft_command(ctx: Context, ranks: int) -> tuple[list[str], dict[str, str]]:
    """``patentqa.train`` on 1 or ``ranks`` processes, GPU or CPU launchers."""
    name = f"sft_{ranks}"
    argv = [sys.executable, "-m", "patentqa.train", *train_overrides(ctx, name)]
    env: dict[str, str] = {}
    if ctx.form == "gpu":
        devices = ",".join(str(i) for i in range(ranks))
        argv += ["launcher=local"] if ranks == 1 else [
            "launcher=8gpu", f"launcher.nproc_per_node={ranks}", f"launcher.cuda_visible_devices='{devices}'"]
        env["CUDA_VISIBLE_DEVICES"] = devices
        argv += ["model.torch_dtype=bfloat16"]
    else:
        argv += ["launcher=local"] if ranks == 1 else ["launcher=cpu_zero3", f"launcher.nproc_per_node={ranks}"]
    ctx.runs[name] = ctx.out / "runs" / name
    return argv, env


def checkpoints_made(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("swift/v*/checkpoint-*") if (p / "trainer_state.json").is_file())


def one_model_at_a_time(log: Path) -> tuple[bool, str]:
    """The load/release record (``patentqa.residency``) shows no load while another model was alive."""
    from patentqa import residency

    if not log.is_file():
        return False, f"no load/release record at {log}"
    events = residency.read_log(log)
    loads = sum(e["event"] == "load" for e in events)
    if loads == 0:
        return False, f"{log} records no model load"
    overlaps = residency.overlaps(events, across_processes=True)  # the checks share the node's GPUs
    return not overlaps, f"{loads} loads, " + ("; ".join(overlaps) if overlaps else "never two alive at once")


def run_command(ctx: Context, name: str, argv: list[str], env: dict[str, str]) -> tuple[int, Path]:
    """Run one check's command with its log under ``OUT/logs``."""
    log = ctx.out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "PATENTQA_RESIDENCY_LOG": str(ctx.residency_log)}
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        try:
            code = subprocess.run(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=ctx.timeout_s, check=False).returncode
        except subprocess.TimeoutExpired:
            out.write(f"\ntimed out after {ctx.timeout_s} s\n")
            code = 124
    return code, log


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:160] if lines else "(empty log)"


def run_summary_of(run_dir: Path) -> dict[str, Any]:
    """The run manifest's summary (world size swift logged, ranks that trained apart); {} without a manifest."""
    try:
        return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")).get("summary") or {}
    except (OSError, ValueError):
        return {}


def sft_check(ranks: int) -> Callable[[Context], tuple[bool, str, Path]]:
    """A training run on ``ranks`` processes: exit 0, its checkpoints, and one job of ``ranks`` ranks (the world size
    swift logged; ranks that each trained alone, with no gradient all-reduce, fail it)."""
    def check(ctx: Context) -> tuple[bool, str, Path]:
        argv, env = sft_command(ctx, ranks)
        code, log = run_command(ctx, f"sft_{ranks}", argv, env)
        ok, detail = training_verdict(ctx.runs[f"sft_{ranks}"], code, ranks, ctx.steps)
        return ok, detail + ("" if ok else f"; {last_line(log)}"), log
    return check


def training_verdict(run_dir: Path, code: int, ranks: int, steps: int) -> tuple[bool, str]:
    """A training row passes on exit 0, ``steps`` checkpoints, and the world size swift logged equal to ``ranks``
    with no rank that trained alone (the run manifest's summary)."""
    made = checkpoints_made(run_dir)
    summary = run_summary_of(run_dir)
    world, apart = summary.get("swift_world_size"), bool(summary.get("ranks_trained_apart"))
    ok = code == 0 and len(made) >= steps and world == ranks and not apart
    return ok, (f"exit {code}, world size {world}, checkpoints {made}"
                + ("; the ranks trained apart (no gradient all-reduce)" if apart else ""))


def one_gpu(ctx: Context) -> dict[str, str]:
    """The environment of a check that runs on one GPU (the first)."""
    return {"CUDA_VISIBLE_DEVICES": "0"} if ctx.form == "gpu" else {}


def parity_check(ctx: Context) -> tuple[bool, str, Path]:
    run = ctx.runs.get("sft_1")
    if run is None or not checkpoints_made(run):
        return False, "needs the 1-rank sft run's checkpoints", ctx.out / "logs"
    if ctx.residency_log.exists():
        ctx.residency_log.unlink()
    argv = [sys.executable, "-m", "patentqa.infer.parity", f"run_dir={run}", "checkpoints=1", "per_form=1",
            "max_new_tokens=8", "kv_cache_gib=1"]  # a fixed KV cache: its blocks compare with the plan exactly
    code, log = run_command(ctx, "parity_vllm_lora", argv, one_gpu(ctx))
    report = run / "eval" / "parity.json"
    if not report.is_file():
        return False, f"exit {code}, no {report}; {last_line(log)}", log
    parity = json.loads(report.read_text(encoding="utf-8"))
    kv_ok, kv_detail = kv_cache_as_planned(run, parity)
    return code == 0 and parity["all_identical"] and kv_ok, \
        (f"exit {code}, {parity['identical']}/{parity['total']} greedy answers identical "
         f"({', '.join(parity['targets'])}); {kv_detail}"), log


def kv_cache_as_planned(run: Path, parity: dict[str, Any]) -> tuple[bool, str]:
    """The KV blocks vLLM allocated in the parity run (its budget fixed: ``kv_cache_memory_bytes`` on a GPU) against
    the dry run's inference plan for the same model and settings, exactly."""
    from omegaconf import OmegaConf

    from patentqa.config import group_config
    from patentqa.infer.capacity import make_inference_plan

    served = parity.get("kv_cache")
    if not served:
        return False, "the parity report names no vLLM KV cache"
    cfg = OmegaConf.load(run / "config.yaml")
    infer = group_config("infer", "vllm")
    infer.update({key: value for key, value in (parity.get("vllm") or {}).items() if value is not None})
    infer.tensor_parallel_size = int(parity.get("tensor_parallel_size") or 1)
    cfg.infer = infer
    layout = next((layout for layout in make_inference_plan(cfg).layouts if layout.tp == infer.tensor_parallel_size
                   and layout.pool is not None), None)
    if layout is None:
        return False, f"the inference plan has no TP {infer.tensor_parallel_size} layout for {cfg.model.path}"
    planned = {"blocks": layout.blocks, "block_size": layout.pool.block}
    ok = planned == {key: served[key] for key in planned}
    return ok, (f"KV cache: vLLM {served['blocks']:,} blocks of {served['block_size']} tokens "
                f"{'=' if ok else '!='} plan {planned['blocks']:,} of {planned['block_size']}")


def probe_check(name: str, model: str, target: str, out: str) -> Callable[[Context], tuple[bool, str, Path]]:
    """``patentqa.infer.lora_probe`` on one GPU: vLLM + LoRA against transformers + peft for an adapter on
    ``target`` (linear_attention | language) of the tiny ``model``; its verdict line is the detail."""
    def check(ctx: Context) -> tuple[bool, str, Path]:
        argv = [sys.executable, "-m", "patentqa.infer.lora_probe", f"model={model}", f"target={target}",
                f"out={ctx.out / out}", f"paths.root={ctx.out}"]
        code, log = run_command(ctx, name, argv, one_gpu(ctx))
        verdict = next((line for line in log.read_text(encoding="utf-8", errors="replace").splitlines()
                        if " LoRA in vLLM (" in line), None)
        return code == 0 and verdict is not None, (verdict or f"exit {code}; {last_line(log)}")[:400], log
    return check


def align_check(model: str) -> Callable[[Context], tuple[bool, str, Path]]:
    """``patentqa.infer.align`` on a tiny family at the smoke budgets; its verdict line is the detail."""
    def check(ctx: Context) -> tuple[bool, str, Path]:
        argv = [sys.executable, "-m", "patentqa.infer.align", "+exp=smoke", f"model={model}", f"paths.root={ctx.out}"]
        code, log = run_command(ctx, f"align_{model}", argv, one_gpu(ctx))
        return code == 0, f"exit {code}; {last_line(log)}", log
    return check


def grpo_check(ctx: Context) -> tuple[bool, str, Path]:
    """The 1-rank run swept on dev (GRPO starts from its best checkpoint, merged), then ``swift rlhf`` GRPO for
    ``steps`` steps; on the GPU form its rollouts by vLLM colocated in the training process, asleep while training."""
    run = ctx.runs.get("sft_1")
    if run is None or not checkpoints_made(run):
        return False, "needs the 1-rank sft run's checkpoints", ctx.out / "logs"
    code, log = run_command(ctx, "grpo_sweep", [sys.executable, "-m", "patentqa.eval", f"run_dir={run}"], one_gpu(ctx))
    if code != 0:
        return False, f"the sweep of {run.name} exited {code}; {last_line(log)}", log
    rollouts = (["train.use_vllm=true", "+train.vllm_mode=colocate", "+train.sleep_level=1",
                 "+train.vllm_gpu_memory_utilization=0.3", "+train.vllm_max_model_len=4096"]
                if ctx.form == "gpu" else ["train.use_vllm=false"])
    grpo_run = ctx.runs["grpo"] = ctx.out / "runs" / "grpo"
    argv = [sys.executable, "-m", "patentqa.train", *train_overrides(ctx, "grpo"), "train=grpo", f"train.init_from={run}",
            "train.num_generations=2", "train.per_device_train_batch_size=2", "train.max_completion_length=8",
            "launcher=local", *rollouts, *(["model.torch_dtype=bfloat16"] if ctx.form == "gpu" else [])]
    code, log = run_command(ctx, "grpo_vllm_colocate", argv, one_gpu(ctx))
    made = checkpoints_made(grpo_run)
    ok = code == 0 and len(made) >= ctx.steps
    how = "vLLM colocate, sleep level 1" if ctx.form == "gpu" else "transformers (the CPU form: no sleep mode)"
    return ok, f"exit {code}, rollouts by {how}, checkpoints {made}" + ("" if ok else f"; {last_line(log)}"), log


def family_models(families: list[str]) -> list[str]:
    """The tiny models the align / lora_parity rows take (``[all]``: every tiny family)."""
    models = list(TINY_FAMILIES) if list(families) == ["all"] else [str(m) for m in families]
    unknown = [m for m in models if m not in TINY_FAMILIES]
    if unknown:
        raise SystemExit(f"error: families={list(families)}: {', '.join(unknown)} not among {', '.join(TINY_FAMILIES)}")
    return models


def memory_rule_check(ctx: Context) -> tuple[bool, str, Path]:
    ok, detail = one_model_at_a_time(ctx.residency_log)
    return ok, detail, ctx.residency_log


def run_checks(args: GpuCheckArgs) -> list[Check]:
    """Every check in order (a failing one does not stop the others that can still run)."""
    form = args.form
    if form == "auto":
        import torch

        form = "gpu" if torch.cuda.is_available() else "cpu"
    if form not in ("gpu", "cpu"):
        raise SystemExit(f"error: form={form}: expected gpu, cpu or auto")
    if args.gpus:
        ranks = args.gpus
    elif form == "gpu":
        import torch

        ranks = torch.cuda.device_count()
    else:
        ranks = 2
    models = family_models(args.families)
    ctx = Context(out=Path(args.out_dir).resolve(), form=form, ranks=ranks, steps=args.steps, timeout_s=args.timeout_s)
    ctx.out.mkdir(parents=True, exist_ok=True)
    checks: list[tuple[str, Callable[[Context], tuple]]] = [
        ("environment", lambda c: (*environment_check(c), None)),
        ("sft_1_rank", sft_check(1)),
        (f"sft_zero3_{ranks}_ranks", sft_check(ranks)),
        ("parity_vllm_lora", parity_check),
        ("linear_attention_lora", probe_check("linear_attention_lora", "tiny_qwen3_5", "linear_attention", "probe")),
        *[(f"align_{m}", align_check(m)) for m in models],
        *[(f"lora_parity_{m}", probe_check(f"lora_parity_{m}", m, "language", f"lora_parity/{m}"))
          for m in models if m != SFT_MODEL],  # SFT_MODEL's: parity_vllm_lora
        *([("grpo_vllm_colocate", grpo_check)] if args.grpo else []),
        ("one_model_at_a_time", memory_rule_check),
    ]
    results: list[Check] = []
    for name, check in checks:
        start = time.monotonic()
        print(f"gpucheck: {name} ...", flush=True)
        passed, detail, log = check(ctx)
        results.append(Check(name, bool(passed), round(time.monotonic() - start, 1), detail,
                             str(log) if log else None))
    write_json_atomic(ctx.out / "gpucheck.json", {"form": form, "ranks": ranks, "passed": all(r.passed for r in results),
                                                  "checks": [asdict(r) for r in results]})
    return results


def format_table(results: list[Check]) -> str:
    width = max(len(r.name) for r in results)
    lines = [f"{'check':<{width}}  result  seconds  detail"]
    lines += [f"{r.name:<{width}}  {'PASS' if r.passed else 'FAIL':<6}  {r.seconds:>7.1f}  {r.detail}"
              + ("" if r.passed or not r.log else f"\n{'':<{width}}  log: {r.log}") for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from patentqa.cli import parse_args

    results = run_checks(parse_args(GpuCheckArgs, argv))
    print(format_table(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
