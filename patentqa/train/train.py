"""The training stage, top to bottom: data (cached) → swift arguments → ``swift sft`` → run record.

``train(cfg, run_dir)`` is what ``python -m patentqa.train +exp=NAME`` runs; tests call it directly.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from patentqa.data.build import build_dataset, dataset_dir
from patentqa.tracking import Checkpoint, Tracker, checkpoints, run_manifest, scrub, update_manifest, write_json_atomic
from patentqa.train import swift_args
from patentqa.train.launch import child_env, launch_env, run_streaming, swift_executable, swift_summary


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
    """The last checkpoint of the latest earlier run of this experiment, with that run's manifest."""
    runs = []
    for manifest_path in Path(cfg.paths.runs_dir).rglob("manifest.json"):
        if manifest_path.parent.resolve() == run_dir.resolve():
            continue
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        found = checkpoints(manifest_path.parent / "swift")
        if manifest.get("name") == cfg.name and found:
            runs.append((manifest.get("started_at", ""), found[-1], manifest))
    if not runs:
        return None
    _, checkpoint, manifest = max(runs, key=lambda run: run[0])
    return checkpoint, manifest


def train(cfg: DictConfig, run_dir: Path, group: str | None = None) -> TrainResult:
    """Train one experiment into ``run_dir``; raise ``TrainFailed`` if swift fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = scrub(OmegaConf.to_container(cfg, resolve=True))
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)), encoding="utf-8")
    data_dir = dataset_dir(cfg) if cfg.dry_run else build_dataset(cfg).out_dir
    resume = find_resume_point(cfg, run_dir) if cfg.resume else None
    if cfg.resume:
        print(f"resume: continuing from {resume[0].path} (step {resume[0].step})" if resume else
              f"resume: no earlier checkpoint of experiment '{cfg.name}' under {cfg.paths.runs_dir}; starting fresh")
    tracker = Tracker(OmegaConf.to_container(cfg.logger, resolve=True), run_dir=run_dir, name=cfg.name,
                      group=group or cfg.name, tags=list(cfg.tags), config=config,
                      run_id=((resume[1].get("wandb") or {}).get("id") if resume else None))
    args = swift_args.render(cfg, data_dir / "train.jsonl", data_dir / "dev.jsonl", run_dir / "swift",
                             report_to="wandb" if tracker.enabled else "none")
    if resume:
        args["resume_from_checkpoint"] = str(resume[0].path)
    swift_args.validate(args)
    launch = launch_env(cfg)
    swift_args.write_config_file(run_dir / "swift_args.yaml", args, launch)
    command = [swift_executable(), "sft", *swift_args.to_argv(args)]
    result = TrainResult(run_dir, command, launch)
    if cfg.dry_run:
        print("dry run: swift sft arguments validated against the installed ms-swift\n"
              + " ".join(f"{k}={shlex.quote(v)}" for k, v in launch.items()) + " \\\n  " + shlex.join(command))
        return result
    manifest_path = run_dir / "manifest.json"
    write_json_atomic(manifest_path, run_manifest(config, extra={
        "name": cfg.name, "run_dir": str(run_dir), "command": command, "launch_env": launch,
        "dataset": {"dir": str(data_dir), "manifest_sha256": _sha256(data_dir / "manifest.json")},
        "seeds": {"seed": cfg.seed, "data_seed": cfg.seed}, "wandb": tracker.info(),
        "resumed_from": str(resume[0].path) if resume else None}))
    started = time.perf_counter()
    with tracker:
        if cfg.train.enabled:
            with tracker.handoff() as wandb_env:  # swift's trainer logs into this same W&B run
                result.exit_code, tail = run_streaming(command, child_env(launch, wandb_env),
                                                       run_dir / "logs" / "swift_sft.log")
        else:
            print("train.enabled=false: no swift sft run (the base model is what gets evaluated)")
            result.exit_code, tail = 0, []
        result.checkpoints = checkpoints(run_dir / "swift")
        result.summary = {**swift_summary(run_dir / "swift"), "checkpoints": len(result.checkpoints),
                          "wall_seconds": round(time.perf_counter() - started, 1)}
        failed = result.exit_code != 0
        cause = next((line for line in reversed(tail) if re.search(r"\w(Error|Exception)\b", line)), None)
        update_manifest(manifest_path, state="failed" if failed else "succeeded", exit_code=result.exit_code,
                        summary=result.summary, error=cause if failed else None,
                        error_tail="\n".join(tail[-15:]) if failed else None)
        if failed:
            raise TrainFailed(f"swift sft exited with status {result.exit_code}: {cause}\nlast lines:\n"
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


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
