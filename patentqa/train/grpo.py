"""GRPO after SFT (``train=grpo``): where it starts, what it rolls out on, what rewards it.

* **Start**: ``train.init_from`` names an SFT run (its dir, or an experiment name: that experiment's latest
  run with a sweep of the same base model, ``model.name``; runs of another model are skipped, each named in one
  line). From a run dir GRPO takes that run's model (``take_run_model``); a ``model=`` naming another one stops. Its best-on-dev checkpoint is merged (``patentqa.train.merge``, with the equivalence
  check) and the merged model is GRPO's ``--model``: the LoRA policy starts at the SFT policy and the reference
  (the same model with the adapter off) *is* the SFT policy, so the KL starts at 0. (``--adapters`` alone would
  make the reference the base model: KL ~9 at step 1.)
* **Rollout prompts**: the SFT rows' prompts (same images, budgets, template), the gold answer as ``solution``;
  training documents only, and the SFT run must have used the same document split.
* **Reward**: ``patentqa/train/reward.py`` with the run's metric settings (``reward_spec``).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from patentqa.data.corpus import DataError, Question
from patentqa.data.sft import write_jsonl_atomic
from patentqa.eval.metrics import resolve_weights
from patentqa.train.reward import RewardSpec
from patentqa.tracking import read_jsonl

ROWS = "grpo_train.jsonl"


def is_grpo(cfg: DictConfig) -> bool:
    return cfg.train.get("rlhf_type") == "grpo"


def grpo_rows(sft_rows: list[dict[str, Any]], answers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT rows without the assistant turn, with ``solution`` (the gold answer), ``round`` and ``options``
    (JSON text) of their question; ``answers`` maps question id → {answer, round, options}."""
    rows = []
    for row in sft_rows:
        question = answers[row["id"]]
        messages = [m for m in row["messages"] if m["role"] != "assistant"]
        rows.append({**{k: v for k, v in row.items() if k != "messages"}, "messages": messages,
                     "solution": question["answer"], "round": question.get("round") or "b",
                     "options": json.dumps(question.get("options") or [], ensure_ascii=False)})
    return rows


def write_grpo_rows(data_dir: Path, questions: list[Question]) -> Path:
    """``grpo_train.jsonl`` beside the dataset's ``train.jsonl`` (rewritten only when its content changes);
    ``questions``: the training split's."""
    sft = read_jsonl(data_dir / "train.jsonl")
    answers = {q.id: {"answer": q.answer, "round": q.round, "options": list(q.options or [])} for q in questions}
    missing = sorted({row["id"] for row in sft} - set(answers))
    if missing:
        raise DataError(f"{data_dir}/train.jsonl: rows of questions outside the training split: {missing[:5]}")
    path = data_dir / ROWS
    write_jsonl_atomic(path, grpo_rows(sft, answers))
    return path


def reward_spec(cfg: DictConfig) -> RewardSpec:
    """The reward's settings from the run's config: ``train.reward`` over ``eval`` and the prompt."""
    reward = cfg.train.get("reward") or {}
    metric = reward.get("metric") or cfg.eval.select_by
    return RewardSpec(metric=str(metric), weights=resolve_weights(cfg.eval.composite),
                      thinking=bool(cfg.model.get("thinking", False)), cot=cfg.prompt.get("target") == "cot",
                      cleanup=bool(cfg.pipeline.cleanup), format_weight=float(reward.get("format_weight") or 0.0),
                      max_answer_chars=int(reward.get("max_answer_chars") or 64))


# --- the starting point ---------------------------------------------------------------------------------

def run_model(manifest: dict[str, Any]) -> dict[str, Any]:
    """The model config (resolved) a run's manifest says it trained; {} when it names none."""
    return (manifest.get("config") or {}).get("model") or {}


def model_of(manifest: dict[str, Any]) -> str | None:
    """The base model (``model.name``) a run's manifest says it trained."""
    return run_model(manifest).get("name")


def names_model(overrides: list[str]) -> bool:
    """Whether Hydra overrides choose the model group (``model=`` or ``+model=``)."""
    return any(o.lstrip("+~").startswith("model=") for o in overrides)


def same_model(manifest: dict[str, Any], cfg: DictConfig, run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` trained this config's base model; if not, say so in one line (a lookup of
    "the latest run of experiment X" skips it: another family's checkpoint is no start for this model)."""
    theirs = model_of(manifest)
    if theirs == cfg.model.name:
        return True
    print(f"skipped {run_dir}: trained model={theirs}, this run is model={cfg.model.name}", flush=True)
    return False


def model_named(cfg: DictConfig) -> bool:
    """Whether the command names a model (``model=`` on the command line; outside Hydra, always)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # not under Hydra (tests call train() directly): the config given is the model meant
        return True
    return names_model(overrides)


def take_run_model(cfg: DictConfig) -> None:
    """``train.init_from`` as a run dir: GRPO trains that SFT run's base model. A command that names another
    model stops here, before anything is built or merged, in one line naming both."""
    given = cfg.train.get("init_from")
    path = Path(str(given)).expanduser() if given else None
    if path is None or not (path / "manifest.json").is_file():
        return
    manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    theirs = run_model(manifest)
    if theirs.get("name") in (None, cfg.model.name):
        return
    if model_named(cfg):
        raise DataError(f"train.init_from={given} trained model={theirs['name']}, this command names "
                        f"model={cfg.model.name}: drop model= (GRPO takes the SFT run's model) or start from a run "
                        f"of model={cfg.model.name}")
    with open_dict(cfg):
        cfg.model = OmegaConf.create(theirs)
    print(f"GRPO trains model={theirs['name']}, the model of {path}", flush=True)


def sft_run(cfg: DictConfig) -> Path | None:
    """The SFT run ``train.init_from`` names: a run dir, or an experiment name (its latest run with a sweep that
    trained this config's base model); None when the experiment has no such run yet."""
    if not cfg.train.get("init_from"):
        raise DataError("train=grpo needs train.init_from: an SFT run dir or experiment name (GRPO starts from its "
                        "best-on-dev checkpoint)")
    given = str(cfg.train.init_from)
    path = Path(given).expanduser()
    if path.is_dir():
        if not (path / "eval" / "sweep.json").is_file():
            raise DataError(f"train.init_from={given}: no eval/sweep.json (the run's checkpoint sweep picks the "
                            f"checkpoint GRPO starts from): run python -m patentqa.eval run_dir={given}")
        return path.resolve()
    runs = []
    for sweep in Path(cfg.paths.runs_dir).rglob("eval/sweep.json"):
        try:
            manifest = json.loads((sweep.parent.parent / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        # an SFT run: a GRPO run of the same experiment (+exp/ablate=grpo) has an init_from of its own
        if (manifest.get("name") == given and manifest.get("state") == "succeeded" and not manifest.get("init_from")
                and same_model(manifest, cfg, sweep.parent.parent)):
            runs.append((manifest.get("started_at", ""), sweep.parent.parent.resolve()))
    return max(runs)[1] if runs else None


def best_checkpoint(run: Path) -> Path:
    """The SFT run's best-on-dev checkpoint (its sweep's choice)."""
    best = json.loads((run / "eval" / "sweep.json").read_text(encoding="utf-8"))["best"]
    if not best.get("path") or best.get("baseline"):
        raise DataError(f"{run}: its sweep chose {best.get('name')}, not a checkpoint: nothing to start GRPO from")
    return Path(best["path"])


def check_same_split(run: Path, data_dir: Path) -> None:
    """GRPO trains on the SFT run's training documents only: both datasets must split documents alike."""
    theirs = json.loads((run / "manifest.json").read_text(encoding="utf-8"))["dataset"]["dir"]
    ours = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))["documents"]
    sft = json.loads((Path(theirs) / "manifest.json").read_text(encoding="utf-8"))["documents"]
    if ours != sft:
        moved = {s: sorted(set(ours.get(s, [])) ^ set(sft.get(s, []))) for s in ("train", "dev", "test")}
        raise DataError(f"train.init_from={run}: its dataset {theirs} splits documents differently from {data_dir} "
                        f"(differences per split: {moved}); GRPO would train on the SFT run's held-out documents")


def merged_start(checkpoint: Path, prompts: Path | None, k: int = 4) -> Path:
    """``CHECKPOINT-merged`` (merged once, checked equivalent to base + adapter; reused after)."""
    from patentqa.train.merge import REPORT_NAME, merge_checkpoint

    merged = checkpoint.with_name(f"{checkpoint.name}-merged")
    report_path = merged / REPORT_NAME
    if report_path.is_file() and json.loads(report_path.read_text(encoding="utf-8")).get("equivalent"):
        return merged
    report = merge_checkpoint(checkpoint, prompts=prompts, k=k, merged=merged if merged.is_dir() else None)
    if not report.equivalent:
        raise DataError(f"{merged}: the merged SFT checkpoint does not answer as base + adapter "
                        f"({'; '.join(report.problems)}); see {report_path}")
    return merged


@dataclass(frozen=True)
class StartPoint:
    """Where a GRPO run starts: the SFT run, its best checkpoint, and that checkpoint merged (GRPO's model)."""

    run: Path
    checkpoint: Path
    merged: Path

    def record(self) -> dict[str, str]:
        return {"run": str(self.run), "checkpoint": str(self.checkpoint), "merged": str(self.merged)}


def start_point(cfg: DictConfig, run: Path, data_dir: Path, build: Any = None) -> StartPoint:
    """From the SFT run ``run`` (``sft_run``): check its split, merge its best checkpoint, write the rollout rows
    (``build``: node 0's dataset build) and point ``cfg.model.path`` at the merged model. A dry run merges
    nothing and says what it would start from."""
    from patentqa.device import is_tiny

    if not cfg.train.get("use_vllm") and not is_tiny(cfg.model):  # before the merge swaps in the merged model
        print(f"WARNING: GRPO rollouts by transformers on {cfg.model.path}: under ZeRO-3 every generated token gathers "
              "every layer (very slow on 32B); use vLLM in colocate mode as +exp=grpo_r8 does "
              "(train.use_vllm=true train.vllm_mode=colocate ...)", file=sys.stderr, flush=True)
    checkpoint = best_checkpoint(run)
    merged = checkpoint.with_name(f"{checkpoint.name}-merged")
    if cfg.dry_run:
        print(f"dry run: GRPO starts from {checkpoint} (best on dev of {run}), merged into {merged}")
        return StartPoint(run, checkpoint, merged)
    check_same_split(run, data_dir)
    if build is not None:
        merged = merged_start(checkpoint, data_dir / "dev_eval.jsonl")
        write_grpo_rows(data_dir, build.questions["train"])
    from patentqa.infer.engines import full_checkpoint_model

    with open_dict(cfg):  # the merged model is the model from here on (a tiny model's merge stays tiny)
        cfg.model = full_checkpoint_model(cfg.model, merged)
    print(f"GRPO starts from {checkpoint} (best on dev of {run}), merged: {merged}", flush=True)
    return StartPoint(run, checkpoint, merged)
