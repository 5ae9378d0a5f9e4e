"""Every experiment composes, and the groups DESIGN.md names exist."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from patentqa.config import CONF_DIR, compose

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "exp").glob("*.yaml"))
GROUPS = ["paths", "data", "retrieval", "prompt", "model", "train", "launcher", "infer", "eval", "logger", "hydra"]


def test_groups_exist() -> None:
    for group in GROUPS:
        assert (CONF_DIR / group).is_dir(), group
    for option in ("ccks2025", "synthetic"):
        assert (CONF_DIR / "data" / f"{option}.yaml").is_file()
    for option in ("qwen2_5_vl_32b", "qwen2_5_vl_7b", "qwen2_5_vl_3b", "tiny"):
        assert (CONF_DIR / "model" / f"{option}.yaml").is_file()
    root = OmegaConf.load(CONF_DIR / "config.yaml")
    assert not any("exp" in str(entry) for entry in root.defaults), "exp must not be in the defaults"


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_experiment_composes(exp: str) -> None:
    cfg = compose([f"+exp={exp}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.name == exp
    assert max(cfg.prompt.max_pixels.values()) > 0


def test_every_yaml_says_how_to_use_it() -> None:
    for path in CONF_DIR.rglob("*.yaml"):
        first = path.read_text(encoding="utf-8").lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path} should open with a comment"


def test_overrides_reach_the_config() -> None:
    cfg = compose(["+exp=lora_r8", "train.lora_rank=16", "model=qwen2_5_vl_7b"])
    assert cfg.train.lora_rank == 16 and cfg.model.name == "qwen2_5_vl_7b"
    assert cfg.data.name == "ccks2025" and cfg.launcher.nproc_per_node == 8
