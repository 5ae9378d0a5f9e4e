"""swift sft arguments: rendered from config, validated by the installed ms-swift's own parser."""
from __future__ import annotations

from pathlib import Path

import pytest

from patentqa.config import compose
from patentqa.train import swift_args
from patentqa.train.launch import child_env, launch_env

SEED_RECIPE = {"tuner_type": "lora", "lora_rank": 8, "lora_alpha": 32, "lorap_lr_ratio": 10, "learning_rate": 1e-4,
               "num_train_epochs": 5, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "adam_beta1": 0.9,
               "adam_beta2": 0.95, "weight_decay": 0.1, "per_device_train_batch_size": 1, "freeze_vit": True,
               "deepspeed": "zero3", "save_steps": 10, "eval_steps": 10,  # the seed's cadence
               "gradient_accumulation_steps": 2}  # the seed's global batch 16 (1 process x 16) on 8 ranks: 1 x 2 x 8


SNAPSHOT = "/hf/hub/models--Qwen--Qwen2.5-VL-32B-Instruct/snapshots/rev"  # what patentqa.hub resolves the id to


def render(*overrides: str) -> dict:
    cfg = compose(["+exp=lora_r8", *overrides])
    return swift_args.render(cfg, Path("/d/train.jsonl"), Path("/d/dev.jsonl"), Path("/r/swift"), "wandb", SNAPSHOT)


def test_seed_recipe_on_8_gpus_is_valid() -> None:
    args = render("model=qwen2_5_vl_32b", "launcher=8gpu")
    assert {k: args[k] for k in SEED_RECIPE} == SEED_RECIPE
    assert args["val_dataset"] == ["/d/dev.jsonl"] and args["split_dataset_ratio"] == 0.0
    assert "device_map" not in args and args["model"] == SNAPSHOT and args["check_model"] is False
    swift_args.validate(args)
    env = launch_env(compose(["+exp=lora_r8", "launcher=8gpu"]))
    assert env["NPROC_PER_NODE"] == "8" and "CUDA_VISIBLE_DEVICES" not in env  # the job's own GPUs: not overridden
    assert env["MAX_PIXELS"] == "2352000"


def test_renamed_flag_fails_fast_with_its_replacement() -> None:
    with pytest.raises(swift_args.SwiftArgError, match="renamed to --tuner_type"):
        swift_args.validate(render("+train.extra_args.train_type=lora"))


def test_typo_and_bad_value_fail_fast() -> None:
    with pytest.raises(swift_args.SwiftArgError, match="did you mean --lora_rank"):
        swift_args.validate(render("+train.extra_args.lora_rnak=8"))
    with pytest.raises(swift_args.SwiftArgError, match="invalid int value"):
        swift_args.validate(render("train.lora_rank=eight"))
    with pytest.raises(swift_args.SwiftArgError, match="device_map"):
        swift_args.validate(render("+train.extra_args.device_map=auto"))


def test_extra_args_pass_any_flag_but_not_twice() -> None:
    args = render("+train.extra_args.max_length=4096")
    swift_args.validate(args)
    assert args["max_length"] == 4096
    with pytest.raises(swift_args.SwiftArgError, match="repeats"):
        render("+train.extra_args.lora_rank=4")


def test_multinode_env() -> None:
    env = launch_env(compose(["+exp=lora_r8", "launcher=multinode", "launcher.nnodes=4", "launcher.node_rank=1",
                              "launcher.master_addr=10.0.0.1"]))
    assert (env["NNODES"], env["NODE_RANK"], env["MASTER_ADDR"], env["NPROC_PER_NODE"]) == ("4", "1", "10.0.0.1", "8")


def test_config_file_form_round_trips(tmp_path: Path) -> None:
    import yaml

    args = render()
    swift_args.write_config_file(tmp_path / "swift_args.yaml", args, {"MAX_PIXELS": "2352000"})
    loaded = yaml.safe_load((tmp_path / "swift_args.yaml").read_text())
    assert loaded.pop("ENV") == {"MAX_PIXELS": "2352000"} and loaded == args


USER_ENV = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "3", "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29611",
            "NCCL_SOCKET_IFNAME": "ib0", "NCCL_DEBUG": "INFO", "NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "1"}


def test_child_env_keeps_the_users_devices_ports_and_nccl() -> None:
    """launcher=local sets none of them: the user's GPU choice, port and NCCL tuning reach swift; an
    inherited NPROC_PER_NODE/NNODES/NODE_RANK is dropped (it would turn one process into a torchrun job)."""
    env = child_env(launch_env(compose(["+exp=lora_r8", "launcher=local"])), {"WANDB_RUN_ID": "r1"}, USER_ENV)
    kept = ("PATH", "CUDA_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT", "NCCL_SOCKET_IFNAME", "NCCL_DEBUG")
    assert {k: env[k] for k in kept} == {k: USER_ENV[k] for k in kept}
    assert not {"NPROC_PER_NODE", "NNODES", "NODE_RANK"} & set(env) and env["WANDB_RUN_ID"] == "r1"


def test_child_env_launcher_values_win() -> None:
    assert child_env(launch_env(compose(["+exp=lora_r8", "launcher=8gpu"])), {}, USER_ENV)["CUDA_VISIBLE_DEVICES"] == "3"
    env = child_env(launch_env(compose(["+exp=lora_r8", "launcher=8gpu", "launcher.cuda_visible_devices='4,5,6,7'"])),
                    {}, USER_ENV)
    assert (env["CUDA_VISIBLE_DEVICES"], env["NPROC_PER_NODE"]) == ("4,5,6,7", "8")
    assert "NNODES" not in env and env["MASTER_PORT"] == "29611" and env["NCCL_SOCKET_IFNAME"] == "ib0"


def test_a_grpo_flag_swift_rlhf_rejects_stops_before_any_sft_run_or_merge(tmp_path: Path) -> None:
    """+exp=smoke_grpo with no smoke run yet would train one first: a mistyped flag must stop it before that."""
    from patentqa.config import compose
    from patentqa.train.train import train

    cfg = compose(["+exp=smoke_grpo", f"paths.root={tmp_path}", "+train.extra_args.num_generatoins=4"])
    with pytest.raises(swift_args.SwiftArgError, match="--num_generatoins is not a flag of the installed ms-swift "
                                                       r"\(swift rlhf\); did you mean --num_generations"):
        train(cfg, tmp_path / "runs" / "smoke_grpo" / "a")
    assert not (tmp_path / "runs" / "smoke").exists() and not (tmp_path / "data").exists()  # no corpus, no SFT run
