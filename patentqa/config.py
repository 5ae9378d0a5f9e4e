"""Where the Hydra config tree lives, and composing it outside a Hydra app (tests, notebooks)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose the config as ``python -m patentqa.<stage> OVERRIDES`` would (without hydra.* keys)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
