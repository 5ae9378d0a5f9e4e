"""The cost a multirun prints before it starts (patentqa/train/cost.py), on configs composed by Hydra itself."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from patentqa.config import CONF_DIR
from patentqa.train.cost import estimate, gpu_hours

SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def _multirun(task: list[str], launcher: str | None = None):
    """The config Hydra hands ``on_multirun_start``: sweep overrides in ``hydra.overrides.task``."""
    fixed = [o for o in task if "," not in o]
    cfg = compose("config", overrides=fixed, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = task
        if launcher:
            cfg.hydra.launcher = {"_target_": launcher}
    return cfg


@pytest.fixture
def hydra_conf():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def test_fold_by_seed_study_counts_runs_and_evaluations(hydra_conf, tmp_path: Path) -> None:
    text = estimate(_multirun(["+exp=smoke", f"paths.cache_dir={tmp_path}", "data.folds=3", "data.fold=0,1,2",
                               "seed=0,1"]))
    assert "multirun: 6 job(s)" in text
    assert "training runs: 6; optimizer steps: 7,200" in text          # 1200 steps each
    # per job: checkpoints 300/600/900/1200 on dev, the best on test, the base model on dev and test
    assert "checkpoints: 24;" in text and "up to 42" in text
    assert "GPU-hours" not in text                                    # not a SLURM launcher


def test_unbuilt_dataset_and_base_only_runs(hydra_conf, tmp_path: Path) -> None:
    text = estimate(_multirun(["+exp=lora_r8", f"paths.cache_dir={tmp_path}", "train.lora_rank=8,16"], SLURM))
    assert "multirun: 2 job(s)" in text and "training runs: 2" in text
    assert "optimizer steps: unknown" in text and "the dataset is not built yet" in text   # max_steps: from rows
    base = estimate(_multirun(["+exp=smoke", f"paths.cache_dir={tmp_path}", "train.enabled=false",
                               "retrieval=gme,none"]))
    assert "training runs: 0" in base and "checkpoints: 0" in base and "up to 4" in base   # base: dev + test


def test_gpu_hours_reproduce_the_seed_run(hydra_conf, tmp_path: Path) -> None:
    """The seed's recipe (32B LoRA, 781 rows × 5 epochs, global batch 16) took ~7 h on 8 A100s: ~56 GPU-hours."""
    cfg = compose("config", overrides=["+exp=lora_r8", f"paths.cache_dir={tmp_path}"])
    steps = -(-781 // 16) * 5
    hours = gpu_hours(cfg, steps, tmp_path / "no_rows.jsonl", {})
    assert 40 < hours < 80, hours
    with open_dict(cfg):
        cfg.launcher.gpu_tflops = 989  # H100
    assert gpu_hours(cfg, steps, tmp_path / "no_rows.jsonl", {}) == pytest.approx(hours * 312 / 989)


def test_steps_come_from_the_built_rows_when_max_steps_is_unset(hydra_conf, tmp_path: Path) -> None:
    from patentqa.data.build import dataset_dir

    task = ["+exp=lora_r8", f"paths.cache_dir={tmp_path}", "seed=0"]
    rows = dataset_dir(compose("config", overrides=task)) / "train.jsonl"
    rows.parent.mkdir(parents=True)
    rows.write_text("{}\n" * 781, encoding="utf-8")   # the seed's 781 rows
    text = estimate(_multirun([*task[:-1], "train.lora_rank=8,16"]))
    # the seed's global batch 16 (1 x 2 accumulation x 8 GPUs): 49 steps an epoch x 5 epochs; a save every 10
    assert "training runs: 2; optimizer steps: 490" in text and "checkpoints: 50;" in text


def _slurm_8gpu(task: list[str]):
    """A multirun config on the repository's own SLURM launcher (its mem_gb, not a stand-in)."""
    fixed = [o for o in task if "," not in o]
    cfg = compose("config", overrides=[*fixed, "hydra/launcher=slurm_8gpu"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = task
    return cfg


def test_the_slurm_memory_request_fits_a_common_node_and_covers_the_plan(hydra_conf, tmp_path: Path) -> None:
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (a dev dependency: `make setup` installs it)

    lora = _slurm_8gpu(["+exp=lora_r8", f"paths.cache_dir={tmp_path}", "train.lora_rank=8,16"])
    mem_gb = lora.hydra.launcher.mem_gb
    assert mem_gb <= 500  # common 8-GPU nodes have 512 GB or more, of which SLURM grants a little less
    text = estimate(lora)
    need = float(text.split("host RAM: a job needs ~")[1].split(" GiB")[0])
    assert 40 < need < mem_gb and "WARNING" not in text
    full = estimate(_slurm_8gpu(["+exp=lora_r8", f"paths.cache_dir={tmp_path}", "train=full",
                                 "launcher=8gpu_offload", "seed=0,1"]))
    assert f"WARNING: hydra.launcher.mem_gb={mem_gb} is below" in full  # offloaded optimizer states: ~870 GiB


@pytest.mark.parametrize(("main_module", "printed"), [("patentqa.train.__main__", True),
                                                      ("patentqa.infer.__main__", False)])
def test_only_a_training_multirun_prints_its_cost(hydra_conf, tmp_path: Path, monkeypatch, capsys,
                                                   main_module: str, printed: bool) -> None:
    import sys
    import types

    from patentqa.train.cost import MultirunCost

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name=main_module)
    monkeypatch.setitem(sys.modules, "__main__", main)
    MultirunCost().on_multirun_start(_multirun(["+exp=smoke", f"paths.cache_dir={tmp_path}", "seed=0,1"]))
    assert ("training runs: 2" in capsys.readouterr().out) is printed  # an infer multirun trains nothing
