"""Every experiment composes, and the groups DESIGN.md names exist."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from patentqa.config import CONF_DIR, compose

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "exp").glob("*.yaml"))
ABLATIONS = sorted(p.stem for p in (CONF_DIR / "exp" / "ablate").glob("*.yaml"))
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
    assert min(cfg.prompt.image_tokens.values()) >= cfg.prompt.min_image_tokens > 0


@pytest.mark.parametrize("preset", ABLATIONS)
@pytest.mark.parametrize("exp", ["smoke", "lora_r8"])
def test_ablation_preset_composes_and_changes_what_it_says(preset: str, exp: str) -> None:
    base = compose([f"+exp={exp}"])
    cfg = compose([f"+exp={exp}", f"+exp/ablate={preset}"])
    OmegaConf.resolve(cfg)
    assert cfg.variant == preset and cfg.name == exp
    changed = {k for k in cfg if k != "variant" and OmegaConf.select(cfg, k) != OmegaConf.select(base, k)}
    expected = CHANGES[preset] - ALREADY.get((exp, preset), set())
    assert changed == expected, f"+exp={exp} +exp/ablate={preset} changes {sorted(changed) or 'nothing'}"


# the config groups each ablation preset changes (`full` is the reference row: none); a new preset must say its own
CHANGES = {"base_model": {"train", "eval"}, "bm25": {"retrieval"}, "cot": {"prompt", "infer"},
           "figure_crop": {"prompt"}, "full": set(), "grpo": {"train"}, "hybrid": {"retrieval"},
           "label_geometry": {"train", "eval"}, "minimal_prompt": {"prompt"}, "no_retrieval": {"retrieval"},
           "no_style_pass": {"pipeline"}, "ocr_text": {"prompt"}}
# what an experiment already has: smoke scores the base model and runs no style pass
ALREADY = {("smoke", "base_model"): {"eval"}, ("smoke", "no_style_pass"): {"pipeline"}}


def test_every_yaml_says_how_to_use_it() -> None:
    for path in CONF_DIR.rglob("*.yaml"):
        first = path.read_text(encoding="utf-8").lstrip().splitlines()[0]
        assert first.startswith("#"), f"{path} should open with a comment"


def test_overrides_reach_the_config() -> None:
    cfg = compose(["+exp=lora_r8", "train.lora_rank=16", "model=qwen2_5_vl_7b"])
    assert cfg.train.lora_rank == 16 and cfg.model.name == "qwen2_5_vl_7b"
    assert cfg.data.name == "ccks2025" and cfg.launcher.nproc_per_node == 8


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm_8gpu"])
def test_slurm_launcher_composes(launcher: str) -> None:
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (a dev dependency: `make setup` installs it)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["+exp=lora_r8", f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_
    if launcher == "slurm_8gpu":
        assert cfg.hydra.launcher.gpus_per_node == 8 and cfg.hydra.launcher.tasks_per_node == 1


def test_paths_resolve_absolute_so_a_run_config_works_from_any_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PATENTQA_ROOT", raising=False)
    monkeypatch.delenv("PATENTQA_CACHE", raising=False)
    cfg = compose(["+exp=smoke"])
    OmegaConf.resolve(cfg)
    for key in ("root", "data_dir", "cache_dir", "runs_dir"):
        assert cfg.paths[key].startswith("/"), (key, cfg.paths[key])
    assert cfg.paths.root == str(tmp_path.resolve()) and cfg.model.path.startswith(str(tmp_path.resolve()))


def test_group_overrides_on_a_stored_run_config() -> None:
    from patentqa.config import apply_overrides, group_config

    stored = compose(["+exp=smoke"])
    OmegaConf.resolve(stored)
    assert group_config("launcher", "cpu_multinode").nproc_per_node == 1  # its defaults list applied
    assert group_config("launcher", "cpu_multinode").wait_for_rank0_s == 3600
    cfg = apply_overrides(stored, ["infer=vllm", "infer.tensor_parallel_size=2", "eval.select_by=char_f1"])
    assert cfg.infer.name == "vllm" and cfg.infer.tensor_parallel_size == 2 and cfg.eval.select_by == "char_f1"
    assert cfg.infer.max_new_tokens == 768  # the vllm option as composed, not the smoke run's transformers block
    assert cfg.model.path == stored.model.path  # everything else as stored
    with pytest.raises(ValueError, match="not key=value"):
        apply_overrides(stored, ["infer"])


def test_multinode_run_dir_follows_patentqa_run_id(monkeypatch) -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    monkeypatch.setenv("PATENTQA_RUN_ID", "job-42")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["+exp=smoke", "launcher=cpu_multinode"], return_hydra_config=True)
    assert cfg.hydra.run.dir.endswith("/runs/smoke/job-42-main")  # every node names the same run dir
    assert cfg.launcher.nnodes == 2 and cfg.launcher.deepspeed is None
