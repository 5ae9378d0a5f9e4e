"""The training stage, top to bottom: data (cached) → swift arguments → ``swift sft`` → run record.

``train(cfg, run_dir)`` is what ``python -m patentqa.train +exp=NAME`` runs; tests call it directly.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from patentqa import preemption, residency
from patentqa.data.build import build_dataset, dataset_dir
from patentqa.data.corpus import DataError
from patentqa.config import world_size
from patentqa.device import require_gpu
from patentqa.tracking import Checkpoint, Tracker, checkpoints, run_manifest, scrub, update_manifest, write_json_atomic
from patentqa.train import grpo, swift_args
from patentqa.train.launch import (RANKS_APART, child_env, launch_env, ranks_trained_apart, run_streaming,
                                   swift_executable, swift_summary)


class TrainFailed(RuntimeError):
    """``swift sft`` ended with a non-zero status (``exit_code``)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainResult:
    """What a training run left behind."""

    run_dir: Path
    command: list[str]
    env: dict[str, str]
    exit_code: int | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] | None = None


def find_resume_point(cfg: DictConfig, run_dir: Path) -> tuple[Checkpoint, dict[str, Any]] | None:
    """The last checkpoint of the latest earlier run of this experiment, variant and base model
    (``+exp/ablate=grpo`` and the SFT run of the same experiment are different runs; so are two models' runs of
    one experiment, each skipped run named in one line), with that run's manifest."""
    runs = []
    for manifest_path in Path(cfg.paths.runs_dir).rglob("manifest.json"):
        if manifest_path.parent.resolve() == run_dir.resolve():
            continue
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        found = checkpoints(manifest_path.parent / "swift")
        variant = (manifest.get("config") or {}).get("variant") or "main"
        if (manifest.get("name") == cfg.name and variant == cfg.get("variant", "main") and found
                and grpo.same_model(manifest, cfg, manifest_path.parent)):
            runs.append((manifest.get("started_at", ""), found[-1], manifest))
    if not runs:
        return None
    _, checkpoint, manifest = max(runs, key=lambda run: run[0])
    return checkpoint, manifest


def requeued_run(run_dir: Path) -> dict[str, Any] | None:
    """This run dir's manifest when this job is a requeue of the job that wrote it (preempted or at its time
    limit: the same scheduler job id, ``preemption.job_id``), else None. Hydra's submitit launcher runs a requeued
    job in the same run dir, so what it finds there is its own run, never another one."""
    job = preemption.job_id()
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if job is not None and (manifest.get("job") or {}).get("id") == job else None


def continuation(cfg: DictConfig, run_dir: Path) -> tuple[tuple[Checkpoint, dict[str, Any]] | None,
                                                            dict[str, Any] | None]:
    """(the checkpoint to resume from and its run's manifest, this run dir's manifest if the job is requeued).
    A requeued job continues its own run, from its last complete checkpoint (or the start), with no flag;
    ``resume=true`` continues the latest earlier run of the experiment (``find_resume_point``)."""
    requeued = requeued_run(run_dir)
    if requeued is not None:
        found = checkpoints(run_dir / "swift")
        return ((found[-1], requeued) if found else None), requeued
    return (find_resume_point(cfg, run_dir) if cfg.resume else None), None


@contextmanager
def interruption_recorded(manifest_path: Path) -> Iterator[None]:
    """An interrupted job's manifest says so (state ``interrupted`` and the signal); the exception goes on."""
    try:
        yield
    except preemption.JobInterrupted as stop:
        update_manifest(manifest_path, state="interrupted", interrupted_by=stop.signal)
        raise


def node_rank(cfg: DictConfig) -> int:
    """This node's rank in a multi-node job (0 when the launcher has none)."""
    return int(cfg.launcher.get("node_rank") or 0)


def wait_for_rank0(cfg: DictConfig, run_dir: Path, poll_s: float = 2.0) -> Path:
    """On node rank > 0: wait for node 0's run manifest in the shared run dir, then return the dataset
    dir it trained from, after checking this node reads the same bytes (the dataset manifest's hash)."""
    manifest_path = run_dir / "manifest.json"
    timeout = float(cfg.launcher.get("wait_for_rank0_s") or 3600)
    deadline = time.monotonic() + timeout
    print(f"node {node_rank(cfg)}: waiting up to {timeout:.0f} s for node 0's data build and {manifest_path}", flush=True)
    while True:
        try:
            dataset = json.loads(manifest_path.read_text(encoding="utf-8"))["dataset"]
            break
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node_rank(cfg)}: node 0 wrote no {manifest_path} within {timeout:.0f} s; "
                                   "all nodes need the same run dir on a shared filesystem (same PATENTQA_RUN_ID "
                                   "and paths.runs_dir) and node 0 must be running") from None
            time.sleep(poll_s)
    data_dir = Path(dataset["dir"])
    if _sha256(data_dir / "manifest.json") != dataset["manifest_sha256"]:
        raise DataError(f"node {node_rank(cfg)}: {data_dir}/manifest.json differs from the one node 0 trained on "
                        "(is the cache on a shared filesystem?)")
    return data_dir


def train(cfg: DictConfig, run_dir: Path, group: str | None = None) -> TrainResult:
    """Train one experiment into ``run_dir``; raise ``TrainFailed`` if swift fails.

    On node rank > 0 of a multi-node job only ``swift sft`` runs (after node 0's data build):
    node 0 writes the config, manifest and W&B run, and evaluates.
    """
    rank = node_rank(cfg)
    if grpo.is_grpo(cfg):  # from an SFT run dir, that run's model (or one line, before anything is built or merged)
        grpo.take_run_model(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    command_name = swift_args.command_of(cfg)
    data_dir, build = dataset_dir(cfg), None
    # every flag checked against the installed ms-swift first: before a data build, a merge or an SFT run for GRPO
    # (the files and model named are not read to validate; what is added later, resume_from_checkpoint, is ours)
    swift_args.validate(swift_args.render(cfg, data_dir / "train.jsonl", data_dir / "dev.jsonl", run_dir / "swift",
                                          report_to="none", model_path=str(cfg.model.path)), command_name)
    if not cfg.dry_run:  # a real model on a machine without a GPU stops here, before anything loads (device.py)
        require_gpu(cfg.model, cfg.get("device"), stage=f"training (swift {command_name})")
        if rank == 0:
            build = build_dataset(cfg)
            data_dir = build.out_dir
        else:
            data_dir = wait_for_rank0(cfg, run_dir)
    resume, requeued = continuation(cfg, run_dir)
    earlier = resume[1] if resume else requeued  # the run whose W&B run goes on
    trained = requeued is not None and requeued.get("exit_code") == 0  # requeued after swift finished: sweep only
    train_file, start = data_dir / "train.jsonl", None
    if grpo.is_grpo(cfg):  # GRPO starts from the SFT run's best checkpoint, merged: model.path becomes that model
        # a resumed GRPO run keeps the SFT run its checkpoints grew from, even when a newer one exists now
        started = ((earlier.get("init_from") or {}).get("run") if earlier else None)
        sft = Path(started) if started else grpo.sft_run(cfg)
        if sft is None and cfg.dry_run:
            print(f"dry run: experiment {cfg.train.init_from} has no swept run of model={cfg.model.name} yet: a real run "
                  "trains it first, then starts GRPO from its best checkpoint, merged")
        elif sft is None and rank > 0:
            raise DataError(f"node {rank}: no swept run of {cfg.train.init_from}: start GRPO on every node after it")
        else:
            start = grpo.start_point(cfg, sft or train_sft_first(cfg), data_dir, build)
        train_file = data_dir / grpo.ROWS
    config = scrub(OmegaConf.to_container(cfg, resolve=True))
    if rank == 0:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)), encoding="utf-8")
    if requeued is not None:
        print(f"requeued job {requeued['job']['id']}: " + ("training finished before; evaluating what is missing"
              if trained else f"continuing this run from {resume[0].path} (step {resume[0].step})" if resume
              else "no complete checkpoint yet; training again from the start"), flush=True)
    elif cfg.resume:
        print(f"resume: continuing from {resume[0].path} (step {resume[0].step})" if resume else
              f"resume: no earlier checkpoint of experiment '{cfg.name}' under {cfg.paths.runs_dir}; starting fresh")
    tracker = Tracker(OmegaConf.to_container(cfg.logger, resolve=True) if rank == 0 else None, run_dir=run_dir,
                      name=cfg.name, group=group or cfg.name, tags=list(cfg.tags), config=config,
                      run_id=((earlier.get("wandb") or {}).get("id") if earlier else None))
    args = swift_args.render(cfg, train_file, data_dir / "dev.jsonl", run_dir / "swift",
                             report_to="wandb" if tracker.enabled else "none",
                             model_path=swift_args.model_for_swift(cfg))
    if resume and not trained:
        args["resume_from_checkpoint"] = str(resume[0].path)
    launch = {**launch_env(cfg), **(grpo.reward_spec(cfg).to_env() if grpo.is_grpo(cfg) else {})}
    if rank == 0:
        swift_args.write_config_file(run_dir / "swift_args.yaml", args, launch)
    command = [swift_executable(), command_name, *swift_args.to_argv(args)]
    result = TrainResult(run_dir, command, launch)
    if cfg.dry_run:
        print(f"dry run: swift {command_name} arguments validated against the installed ms-swift\n"
              + " ".join(f"{k}={shlex.quote(v)}" for k, v in launch.items()) + " \\\n  " + shlex.join(command))
        print(dry_run_plan(cfg, data_dir / "train.jsonl"))
        return result
    log_path = run_dir / "logs" / (f"swift_{command_name}.log" if rank == 0 else f"swift_{command_name}.node{rank}.log")
    if rank > 0:
        if trained:
            return result
        result.exit_code, tail = run_streaming(command, child_env(launch, {}), log_path)
        if result.exit_code != 0:
            raise TrainFailed(f"node {rank}: swift {command_name} exited with status {result.exit_code}\nlast lines:\n"
                              + "\n".join(tail[-15:]), result.exit_code)
        return result
    manifest_path = run_dir / "manifest.json"
    write_json_atomic(manifest_path, run_manifest(config, extra={
        "name": cfg.name, "run_dir": str(run_dir), "command": command, "launch_env": launch,
        "distributed": {"nnodes": int(cfg.launcher.get("nnodes") or 1),
                        "nproc_per_node": int(cfg.launcher.get("nproc_per_node") or 1),
                        "world_size": world_size(cfg), "deepspeed": cfg.launcher.get("deepspeed")},
        "dataset": {"dir": str(data_dir), "manifest_sha256": _sha256(data_dir / "manifest.json"),
                    **_split_checks(data_dir / "manifest.json")},
        "seeds": {"seed": cfg.seed, "data_seed": cfg.seed}, "wandb": tracker.info(),
        "init_from": start.record() if start is not None else None,
        "resumed_from": str(resume[0].path) if resume else None,
        "job": {"id": preemption.job_id(), "requeues": requeued["job"].get("requeues", 0) + 1 if requeued else 0},
        **({k: requeued.get(k) for k in ("exit_code", "summary", "resumed_from")} if trained else {})}))
    started = time.perf_counter()
    with preemption.guard(), tracker, interruption_recorded(manifest_path):
        if trained:
            print("swift already finished in this job before it was requeued: not run again")
            result.exit_code, tail = 0, []
        elif cfg.train.enabled:
            # swift's trainer logs into this same W&B run; no model of ours may be alive meanwhile (GME released)
            with tracker.handoff() as wandb_env, residency.holding(f"swift {command_name}", str(cfg.model.path)):
                result.exit_code, tail = run_streaming(command, child_env(launch, wandb_env), log_path)
        else:
            print("train.enabled=false: no swift sft run (the base model is what gets evaluated)")
            result.exit_code, tail = 0, []
        result.checkpoints = checkpoints(run_dir / "swift")
        result.summary = (requeued.get("summary") if trained else None) or run_summary(
            cfg, run_dir, log_path, wall_seconds=time.perf_counter() - started)
        failed = result.exit_code != 0
        cause = next((line for line in reversed(tail) if re.search(r"\w(Error|Exception)\b", line)), None)
        update_manifest(manifest_path, state="failed" if failed else "succeeded", exit_code=result.exit_code,
                        summary=result.summary, error=cause if failed else None,
                        error_tail="\n".join(tail[-15:]) if failed else None)
        if failed:
            raise TrainFailed(f"swift {command_name} exited with status {result.exit_code}: {cause}\nlast lines:\n"
                              + "\n".join(tail[-15:]), result.exit_code)
        tracker.summary({f"train/{k}": v for k, v in result.summary.items() if isinstance(v, (int, float))})
        if cfg.eval.after_train:
            from patentqa.eval.report import build_report  # eval sits after train in the loop
            from patentqa.eval.sweep import sweep

            result.sweep = sweep(cfg, run_dir, tracker)
            report = build_report([run_dir], run_dir, run_dir / "report", title=f"{cfg.name} ({run_dir.name})")
            update_manifest(manifest_path, best_checkpoint=result.sweep["best"], report=str(report))
            print(f"report: {report}")
    return result


def train_sft_first(cfg: DictConfig) -> Path:
    """No swept run of experiment ``train.init_from`` yet: train it now (``+exp=NAME`` with this invocation's
    other overrides, e.g. paths and logger), into its own run dir, and return that dir."""
    from hydra.core.hydra_config import HydraConfig

    from patentqa.config import compose

    name = str(cfg.train.init_from)
    own = ("+exp=", "exp=", "train.", "+train.", "train=", "name=", "eval.", "hydra.", "dry_run=")
    try:
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(own)]
    except ValueError:  # not under Hydra (tests call train() directly)
        overrides = [f"paths.root={cfg.paths.root}", f"paths.cache_dir={cfg.paths.cache_dir}"]
    if not grpo.names_model(overrides):  # the SFT run trains the model GRPO will
        overrides.append(f"model={cfg.model.name}")
    sft = compose([f"+exp={name}", *overrides, "eval.after_train=true"])
    run_dir = Path(sft.paths.runs_dir) / name / time.strftime("%Y-%m-%d_%H-%M-%S-for-grpo")
    print(f"train.init_from={name}: no swept run of experiment {name} with model={cfg.model.name} under "
          f"{cfg.paths.runs_dir}: training it first (+exp={name} model={cfg.model.name}) into {run_dir}", flush=True)
    train(sft, run_dir)
    return run_dir.resolve()


def run_summary(cfg: DictConfig, run_dir: Path, log_path: Path, wall_seconds: float) -> dict[str, Any]:
    """What swift's output says about the run: losses, checkpoints, world size, and whether its ranks
    trained apart (``ranks_trained_apart``, with a warning on stderr)."""
    summary: dict[str, Any] = {**swift_summary(run_dir / "swift"), "checkpoints": len(checkpoints(run_dir / "swift")),
                               "swift_world_size": logged_world_size(log_path), "wall_seconds": round(wall_seconds, 1)}
    if world_size(cfg) > 1 and ranks_trained_apart(log_path):
        summary["ranks_trained_apart"] = True
        print(f"WARNING: swift ran {world_size(cfg)} ranks but transformers trained each alone (no gradient "
              f"all-reduce): '{RANKS_APART}' in {log_path}; on a CPU set launcher.cpu_ranks=true", file=sys.stderr)
    return summary


def dry_run_plan(cfg: DictConfig, rows_file: Path) -> str:
    """What the dry run prints after the command: the schedule (batch, steps, checkpoints), the meta-device
    plan (params, trainable, ZeRO-3 memory, tokens) and the vLLM inference plan; each part that cannot be
    computed says why, and the others still print."""
    from patentqa.infer.capacity import make_inference_plan
    from patentqa.train.plan import make_plan
    from patentqa.train.schedule import make_schedule

    from patentqa.train.grpo_plan import make_grpo_plan

    parts, built = [], {}
    steps = [("schedule", make_schedule), ("plan", make_plan), ("inference plan", make_inference_plan)]
    if grpo.is_grpo(cfg):  # rollouts and memory on top of the policy's plan
        steps.insert(2, ("GRPO plan", lambda cfg, _: make_grpo_plan(cfg, built["plan"])))
    for name, build in steps:
        try:
            built[name] = build(cfg, rows_file)
            parts.append(built[name].format())
        except (ValueError, KeyError, OSError, ImportError) as error:
            parts.append(f"{name}: not available ({type(error).__name__}: {error})")
    return "\n".join(parts)


def logged_world_size(log_path: Path) -> int | None:
    """The world size swift reports (``rank: 0, ..., world_size: N``) in a run's log; None if absent."""
    if not log_path.is_file():
        return None
    found = re.search(r"\bworld_size: (\d+)", log_path.read_text(encoding="utf-8", errors="replace"))
    return int(found.group(1)) if found else None


def _split_checks(path: Path) -> dict[str, Any]:
    """The dataset manifest's leakage checks and fold assignment, copied into the run manifest."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {"leakage": manifest.get("leakage"), "folds": manifest.get("folds"),
            "split_sizes": manifest.get("questions")}


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
