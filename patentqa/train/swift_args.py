"""``swift sft`` / ``swift rlhf`` arguments: rendered from config, validated against the installed ms-swift.

``train.rlhf_type`` set (``train=grpo``) makes the command ``swift rlhf``; otherwise ``swift sft``.
Validation uses swift's own parser (``HfArgumentParser`` over ``SftArguments`` or ``RLHFArguments``) without
constructing the arguments, so an unknown, renamed or mistyped flag fails before any
process starts, naming the flag and, where known, its replacement.
"""
from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from patentqa.models import chat_template_kwargs

# flags of older ms-swift versions (the seed used 2.x/3.x) and their 4.x names
RENAMED: dict[str, str] = {
    "train_type": "tuner_type",
    "metric": "eval_metric",
    "sft_type": "tuner_type",
    "custom_train_dataset_path": "dataset",
    "custom_val_dataset_path": "val_dataset",
    "dtype": "torch_dtype",
}
# GRPO's reward: a plugin swift imports in each rank (it imports swift; patentqa.train does not import it)
REWARD_PLUGIN = Path(__file__).with_name("reward_plugin.py")
# train config keys that are ours, not swift flags
_NOT_SWIFT = {"extra_args", "enabled", "init_from", "reward"}


class SwiftArgError(ValueError):
    """A swift flag that the installed ms-swift does not accept."""


def command_of(cfg: DictConfig) -> str:
    """The swift subcommand a train config runs: ``rlhf`` when it sets ``rlhf_type`` (GRPO), else ``sft``."""
    return "rlhf" if cfg.train.get("rlhf_type") else "sft"


@functools.lru_cache(maxsize=2)
def _parser(command: str = "sft") -> Any:
    """swift's own argument parser for ``swift sft`` or ``swift rlhf`` (built once each: ~5 s of imports)."""
    import swift
    from swift.utils.utils import _patch_get_type_hints
    from transformers import HfArgumentParser

    arguments = {"sft": swift.SftArguments, "rlhf": swift.RLHFArguments}[command]
    with _patch_get_type_hints():
        parser = HfArgumentParser([arguments])

    def fail(message: str) -> None:
        raise SwiftArgError(f"swift {command} rejects the arguments: {message}")

    parser.error = fail  # type: ignore[method-assign]
    return parser


def known_flags(command: str = "sft") -> set[str]:
    """Every flag name the installed ``swift COMMAND`` accepts."""
    return {action.dest for action in _parser(command)._actions}


def to_argv(args: dict[str, Any]) -> list[str]:
    """``--flag value`` pairs; lists become several values, dicts JSON, booleans true/false."""
    argv: list[str] = []
    for key, value in args.items():
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv += [_scalar(v) for v in value]
        else:
            argv.append(_scalar(value))
    return argv


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        import json

        return json.dumps(value, ensure_ascii=False)
    return str(value)


def validate(args: dict[str, Any], command: str = "sft") -> None:
    """Raise ``SwiftArgError`` for any flag or value the installed ``swift COMMAND`` would reject."""
    flags = known_flags(command)
    for key in args:
        if key in flags:
            continue
        if key in RENAMED:
            raise SwiftArgError(f"--{key} is not a flag of the installed ms-swift; it was renamed to --{RENAMED[key]}")
        close = difflib.get_close_matches(key, flags, n=3)
        hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
        raise SwiftArgError(f"--{key} is not a flag of the installed ms-swift (swift {command}){hint}")
    _, unknown = _parser(command).parse_known_args(to_argv(args))
    if unknown:
        raise SwiftArgError(f"swift {command} does not accept: {' '.join(unknown)}")
    if "device_map" in args and args.get("deepspeed"):
        raise SwiftArgError("--device_map cannot be combined with --deepspeed (swift and ZeRO-3 both refuse it)")


def model_for_swift(cfg: DictConfig) -> str:
    """The local model dir ``swift sft`` gets (``patentqa.hub.model_dir``: a hub id fetched once, into the
    cache every stage reads). A dry run downloads nothing: a snapshot not fetched yet shows as its id."""
    from patentqa.hub import ModelNotFound, cache_dir, model_dir, offline

    try:
        return model_dir(cfg.model, download=not cfg.dry_run)
    except ModelNotFound as error:
        if not cfg.dry_run:
            raise
        hub = cfg.model.get("hub") or "huggingface"
        print(f"dry run: {error} (a real run stops here)" if offline() else
              f"dry run: {cfg.model.path} is not in the {hub} cache {cache_dir(hub)} yet; a real run downloads it "
              f"there once and gives swift that snapshot dir")
        return str(cfg.model.path)


def render(cfg: DictConfig, train_file: Path, val_file: Path, output_dir: Path, report_to: str,
           model_path: str) -> dict[str, Any]:
    """The ``swift sft`` arguments for a run, from the ``model``, ``train`` and ``launcher`` groups;
    ``model_path`` is the local model dir (``model_for_swift``)."""
    model = cfg.model
    args: dict[str, Any] = {
        # a local dir, so swift loads it as it is: no hub, so its use_hf (ModelScope by default) never matters
        "model": model_path,  # adapters record it as their base
        "check_model": False,  # no hub calls for a local dir (offline nodes)
        "model_type": model.model_type,
        "template": model.template,
        **{key: value for key, value in chat_template_kwargs(model).items()},  # --enable_thinking, as inference
        "torch_dtype": model.torch_dtype,
        "dataset": [str(train_file)],
        # our document-level dev split, never swift's random split (GRPO: the checkpoint sweep scores dev)
        **({"val_dataset": [str(val_file)]} if command_of(cfg) == "sft" else {}),
        "split_dataset_ratio": 0.0,
        "output_dir": str(output_dir),
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "strict": True,  # a row that fails to encode is an error, not silently swapped for another
        "report_to": [report_to],
        "run_name": cfg.name,  # W&B run name (swift's default is its output dir)
    }
    train = OmegaConf.to_container(cfg.train, resolve=True)
    assert isinstance(train, dict)
    for key, value in train.items():
        if key not in _NOT_SWIFT and value is not None:
            args[key] = value
    plugins = []
    if command_of(cfg) == "rlhf":  # the reward is our metric: a plugin swift imports in each rank
        from patentqa.train.reward import NAME

        plugins.append(str(REWARD_PLUGIN))
        args["reward_funcs"] = [NAME]
    if cfg.launcher.get("deepspeed"):
        args["deepspeed"] = cfg.launcher.deepspeed
    if cfg.launcher.get("cpu_ranks"):  # several CPU processes must agree they are one job (cpu_distributed.py)
        plugins.append(str(Path(__file__).with_name("cpu_distributed.py")))
    if plugins:
        args["external_plugins"] = plugins
        if cfg.launcher.get("deepspeed"):
            args["fp16"] = False  # DeepSpeed refuses fp16 on a CPU; swift turns it on for float32 models
    for key, value in (train.get("extra_args") or {}).items():
        if key in args:
            raise SwiftArgError(f"train.extra_args.{key} repeats a value set elsewhere ({args[key]!r}); "
                                f"set it there instead")
        args[key] = value
    return args


def write_config_file(path: Path, args: dict[str, Any], env: dict[str, str]) -> None:
    """swift's config-file form (``swift sft FILE.yaml``): flags as keys, ``ENV`` for the environment."""
    payload = dict(args)
    if env:
        payload["ENV"] = dict(env)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(payload, allow_unicode=True, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
