"""Where the Hydra config tree lives, and composing it outside a Hydra app (tests, notebooks, tools).

Importing this module registers the resolvers the tree uses: ``abspath`` (``conf/paths``: every
resolved config, and every run's ``config.yaml``, holds absolute paths, so a run can be evaluated
from any directory), ``join`` (a list as one word, e.g. the rounds in a data dir's name) and
``accumulation_for`` (a recipe's global batch held fixed whatever the launcher) and ``answer_budget``
(a generation budget that grows to ``thinking_max_new_tokens`` for a model that reasons first) and ``family``
(a value the model family knows, ``${family:image_factor}`` in ``conf/model``: one place for it,
``patentqa/models/``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

OmegaConf.register_new_resolver("abspath", lambda path: str(Path(str(path)).expanduser().resolve()), replace=True)
OmegaConf.register_new_resolver("join", lambda items, sep="": sep.join(str(i) for i in items), replace=True)


def world_size(cfg: DictConfig) -> int:
    """Training processes of the whole job, as the launcher group says: nodes × processes per node."""
    return int(cfg.launcher.get("nnodes") or 1) * int(cfg.launcher.get("nproc_per_node") or 1)


def accumulation_for(global_batch: int, *, _root_: DictConfig) -> int:
    """Gradient accumulation that makes ``global_batch`` rows an optimizer step on this config's launcher:
    ``global_batch / (train.per_device_train_batch_size × world size)``. ``conf/exp/lora_r8.yaml`` uses it
    (``${accumulation_for:16}``) so the seed's batch of 16 stays 16 on 8 ranks (2) and in one process (16)."""
    per_step = int(_root_.train.per_device_train_batch_size) * world_size(_root_)
    if int(global_batch) % per_step:
        raise ValueError(f"a global batch of {global_batch} rows cannot be split into per-device batches of "
                         f"{_root_.train.per_device_train_batch_size} on {world_size(_root_)} rank(s) "
                         f"(launcher={_root_.launcher.name}): choose a global batch that is a multiple of {per_step}")
    return int(global_batch) // per_step


OmegaConf.register_new_resolver("accumulation_for", accumulation_for, replace=True)


def answer_budget(plain: int, *, _root_: DictConfig) -> int:
    """New tokens a call may generate: ``plain`` (the group's own default, e.g. ``${answer_budget:768}`` in
    ``conf/infer/vllm.yaml``), or the root's ``thinking_max_new_tokens`` when ``model.thinking`` is true (a
    *-Thinking checkpoint writes its reasoning before the answer). The thinking budget lives in one place,
    ``conf/config.yaml``; an explicit value (``infer.max_new_tokens=N``, an experiment's) replaces the whole
    interpolation."""
    if not OmegaConf.select(_root_, "model.thinking", default=False):
        return int(plain)
    budget = OmegaConf.select(_root_, "thinking_max_new_tokens", default=None)
    if budget is None:
        raise ValueError("model.thinking is true but the config has no thinking_max_new_tokens (conf/config.yaml)")
    return int(budget)


OmegaConf.register_new_resolver("answer_budget", answer_budget, replace=True)


def family_value(key: str, *, _parent_: DictConfig) -> Any:
    """``Family.<key>`` of the model config this interpolation sits in (``patentqa.models``)."""
    from patentqa.models import family_of

    return getattr(family_of(_parent_), key)


OmegaConf.register_new_resolver("family", family_value, replace=True)


def slice_settings(*, _parent_: DictConfig, _root_: DictConfig) -> dict[str, Any]:
    """The processor's slice settings of a slicing family (MiniCPM-V) for this run's ``prompt`` budgets: each
    form's page as rendered (an A4 page at its budget × ``image_factor``²) against its visual-token budget
    (``Family.slice_settings``); {} for a family that budgets pixels. ``${slices:}`` in ``conf/model``."""
    from patentqa.models import family_of
    from patentqa.train.plan import form_pages

    budgets = {str(form): int(tokens) for form, tokens in _root_.prompt.image_tokens.items()}
    pages = form_pages(budgets, int(_root_.prompt.min_image_tokens), int(_parent_.image_factor))
    return family_of(_parent_).slice_settings(pages, budgets)


OmegaConf.register_new_resolver("slices", slice_settings, replace=True)


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose the config as ``python -m patentqa.<stage> OVERRIDES`` would (without hydra.* keys)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: its search path is this tree
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def config_groups() -> list[str]:
    """Names of the top-level config groups (``infer``, ``launcher``, ...)."""
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "exp"))


def group_config(group: str, name: str) -> DictConfig:
    """Option ``name`` of config group ``group`` as Hydra composes it (its defaults list applied),
    interpolations left unresolved so they resolve against the config it is placed in."""
    composed = compose([f"{group}={name}"])
    return OmegaConf.create(OmegaConf.to_container(composed[group], resolve=False))


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A stored run config with command-line overrides: ``GROUP=OPTION`` swaps in that group's
    option (``infer=vllm``), ``key.sub=value`` sets a value; applied left to right."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    groups = config_groups()
    for override in overrides:
        key, _, value = override.partition("=")
        if not _:
            raise ValueError(f"override {override!r} is not key=value")
        if key in groups:
            cfg[key] = group_config(key, value)
        else:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([override]))
    return cfg


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` for a DictConfig, dict or plain object; ``default`` when missing or None."""
    if cfg is None:
        return default
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value
