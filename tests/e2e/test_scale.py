"""The GPU node's training paths, executed on this CPU at tiny scale: two DDP ranks (torchrun, gloo),
DeepSpeed ZeRO-3 in one and two processes (train, save, resume), two "nodes" on 127.0.0.1, and
Hydra's submitit launcher. Every run is a real ``swift sft`` of a few steps.

One job of two ranks is proven by numbers: with LoRA dropout off (its random masks differ by
rank count), 2 ranks × batch 1 and 1 process × batch 2 see the same rows in the same steps,
so they follow the same loss trajectory and end with the same adapter. Only the order of the
float32 additions differs (an all-reduce of two gradients vs. one batched sum): ~1e-7 relative
per step here, so 1e-4 is the bound, while a 1 × batch 1 run (half the rows) ends 0.7 away.
swift's sampler shuffles ``N - N mod world_size`` rows, so the comparison needs an even row
count (6 synthetic documents give 54 rows).
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import cache_root
from patentqa.config import compose
from patentqa.eval.sweep import sweep
from patentqa.train.train import train

pytestmark = pytest.mark.e2e

SAME = 1e-4  # relative: float32 reduction order only (module doc)
ONE_JOB = ["+train.extra_args.lora_dropout=0", "train.logging_steps=1"]


def overrides(tmp: Path, *extra: str) -> list[str]:
    tiny = cache_root() / "tiny"
    return ["+exp=smoke", f"paths.root={tmp}", f"paths.cache_dir={tmp}/cache", "data.synth.n_docs=6",
            f"model.path={tiny}/qwen2_5_vl", f"model.embedder_path={tiny}/qwen2_vl_gme", "logger=none",
            "train.max_steps=6", "train.save_steps=6", "train.eval_steps=6", "eval.after_train=false", *extra]


def losses(run_dir: Path) -> list[float]:
    (log,) = (run_dir / "swift").glob("v*/logging.jsonl")
    return [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]


def adapter(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    (path,) = (run_dir / "swift").glob(f"v*/checkpoint-{step}/adapter_model.safetensors")
    return load_file(str(path))


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Relative L2 distance of the LoRA B matrices (they start at zero: all of it is training)."""
    keys = [k for k in b if "lora_B" in k]
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in keys) / sum((b[k] ** 2).sum() for k in keys)) ** 0.5


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= SAME * abs(y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_vl, tiny_embedder) -> Path:
    return tmp_path_factory.mktemp("scale")


@pytest.fixture(scope="module")
def ddp(root: Path) -> tuple[Path, object]:
    run_dir = root / "runs" / "ddp"
    cfg = compose(overrides(root, "launcher=cpu_ddp", *ONE_JOB))
    return run_dir, train(cfg, run_dir)


def test_two_ddp_ranks_are_one_job(ddp, root: Path) -> None:
    run_dir, result = ddp
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["distributed"] == {"nnodes": 1, "nproc_per_node": 2, "world_size": 2, "deepspeed": None}
    assert manifest["launch_env"]["NPROC_PER_NODE"] == "2" and manifest["summary"]["swift_world_size"] == 2
    assert "world_size: 2" in (run_dir / "logs" / "swift_sft.log").read_text()
    assert "ranks_trained_apart" not in manifest["summary"]  # transformers saw DDP (cpu_distributed.py)
    assert [c.step for c in result.checkpoints] == [6]

    rows = len(Path(json.loads((run_dir / "manifest.json").read_text())["dataset"]["dir"], "train.jsonl")
               .read_text().splitlines())
    assert rows % 2 == 0, f"{rows} rows: swift's 2-rank sampler drops one, so the row orders would differ"
    batch2, batch1 = root / "runs" / "batch2", root / "runs" / "batch1"
    train(compose(overrides(root, "train.per_device_train_batch_size=2", *ONE_JOB)), batch2)
    train(compose(overrides(root, *ONE_JOB)), batch1)
    assert close(losses(run_dir), losses(batch2)), (losses(run_dir), losses(batch2))
    assert distance(adapter(run_dir, 6), adapter(batch2, 6)) < SAME
    assert distance(adapter(batch1, 6), adapter(batch2, 6)) > 0.1  # the control: half the rows is another run


def test_ddp_checkpoints_are_swept_with_vllm_from_another_directory(ddp, root: Path, tmp_path: Path) -> None:
    """`python -m patentqa.eval run_dir=RUN infer=vllm` from elsewhere: absolute paths; vLLM = transformers."""
    import vllm  # noqa: F401  (make setup installs it: missing fails, a skip would hide it)
    run_dir, _ = ddp
    cfg = compose(overrides(root, "launcher=cpu_ddp", *ONE_JOB, "eval.include_base=false", "infer.max_new_tokens=8"))
    hf = sweep(cfg, run_dir)  # transformers, in this process
    (run_dir / "eval").rename(run_dir / "eval-transformers")
    done = subprocess.run([sys.executable, "-m", "patentqa.eval", f"run_dir={run_dir}", "infer=vllm",
                           "infer.max_model_len=4096", "infer.max_new_tokens=8", "infer.max_lora_rank=32",
                           "eval.include_base=false"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((run_dir / "eval" / "sweep.json").read_text())
    assert [c["name"] for c in report["checkpoints"]] == [c["name"] for c in hf["checkpoints"]] == ["checkpoint-6"]

    def answers(eval_dir: Path) -> list[str]:
        return [json.loads(line)["raw_answer"]
                for line in (eval_dir / "dev" / "checkpoint-6" / "predictions.jsonl").read_text().splitlines()]
    assert answers(run_dir / "eval") == answers(run_dir / "eval-transformers")
    assert report["best"]["dev"] == hf["best"]["dev"]


def test_zero3_one_and_two_processes_train_save_and_resume(root: Path) -> None:
    one, two = root / "runs" / "z3-one", root / "runs" / "z3-two"
    z3 = [*ONE_JOB, "launcher=cpu_zero3", "train.max_steps=4", "train.save_steps=2", "train.eval_steps=2"]
    first = train(compose(overrides(root, "name=z3one", "train.per_device_train_batch_size=2", *z3)), one)
    assert [c.step for c in first.checkpoints] == [2, 4]
    assert (next((one / "swift").glob("v*/checkpoint-4")) / "global_step4").is_dir()  # DeepSpeed's own states
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["distributed"]["deepspeed"] == "zero3" and manifest["summary"]["swift_world_size"] == 1

    # two ZeRO-3 processes: batch 1 each follows one process with batch 2
    train(compose(overrides(root, "name=z3two", "launcher.nproc_per_node=2", *z3)), two)
    assert json.loads((two / "manifest.json").read_text())["summary"]["swift_world_size"] == 2
    assert close(losses(two), losses(one)), (losses(two), losses(one))

    resumed = root / "runs" / "z3-resumed"
    again = train(compose(overrides(root, "name=z3one", "resume=true", "train.per_device_train_batch_size=2",
                                    *z3[:-3], "train.max_steps=6", "train.save_steps=2", "train.eval_steps=2")), resumed)
    assert json.loads((resumed / "manifest.json").read_text())["resumed_from"].endswith("checkpoint-4")
    steps = [r["global_step/max_steps"] for r in map(json.loads, next((resumed / "swift").glob("v*/logging.jsonl"))
                                                     .read_text().splitlines()) if "loss" in r]
    assert steps[0] == "5/6" and [c.step for c in again.checkpoints] == [6]  # continued, nothing redone


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


NODE1_UMASK = 0o027  # node 1's files come out 0o640 (node 0's 0o644): a listing tells who created what
# all node 1 may create: its own swift log and its rank's RNG state (the trainer saves one per rank); no config,
# manifest, Hydra or W&B file
NODE1_WRITES = ["runs/smoke/two-nodes-main/logs/swift_sft.node1.log",
                "runs/smoke/two-nodes-main/swift/v*/checkpoint-6/rng_state_1.pth"]


def test_two_nodes_on_localhost_are_one_job(root: Path) -> None:
    """Node 1 starts first and waits for node 0's data build; one run dir, one W&B run, both exit 0."""
    env = {**os.environ, "PATENTQA_RUN_ID": "two-nodes", "NNODES": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "WANDB_MODE": "offline"}
    argv = [sys.executable, "-m", "patentqa.train", *overrides(root / "nodes", "launcher=cpu_multinode", "logger=wandb")]
    logs = root / "nodes-logs"
    logs.mkdir()
    with open(logs / "node1.log", "w") as out1:  # node 1's umask marks every file it creates (others: no access)
        node1 = subprocess.Popen(argv, env={**env, "NODE_RANK": "1"}, stdout=out1, stderr=subprocess.STDOUT,
                                 umask=NODE1_UMASK)
        node0 = subprocess.run(argv, env={**env, "NODE_RANK": "0"}, capture_output=True, text=True, timeout=600)
        code1 = node1.wait(timeout=120)
    log1 = (logs / "node1.log").read_text()
    assert node0.returncode == 0 and code1 == 0, node0.stdout[-2000:] + node0.stderr[-2000:] + log1[-2000:]
    (run_dir,) = (root / "nodes" / "runs" / "smoke").iterdir()
    assert run_dir.name == "two-nodes-main" and "waiting up to" in log1
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["distributed"]["world_size"] == 2 and manifest["summary"]["swift_world_size"] == 2
    assert manifest["launch_env"]["NODE_RANK"] == "0"  # written by node 0 alone
    assert "rank: 1, local_rank: 0, world_size: 2" in (run_dir / "logs" / "swift_sft.node1.log").read_text()
    assert len(list((run_dir / "swift").glob("v*"))) == 1  # one swift output dir for both nodes
    pieces = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert pieces and {p.name.rsplit("-", 1)[-1] for p in pieces} == {manifest["wandb"]["id"]}  # one run, rank 0
    by_node1 = sorted(re.sub(r"/v\d+-[\d-]+/", "/v*/", p.relative_to(root / "nodes").as_posix())
                      for p in (root / "nodes").rglob("*") if p.is_file() and p.stat().st_mode & 0o077 == 0o040)
    assert by_node1 == NODE1_WRITES, by_node1


def test_submitit_local_sweep_runs_each_member(root: Path) -> None:
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (a dev dependency: missing fails)
    out = root / "submitit"
    argv = [sys.executable, "-m", "patentqa.train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
            *overrides(out, "train.max_steps=2", "train.save_steps=2"), "seed=0,1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sweep_dir,) = (out / "runs" / "multirun").iterdir()
    members = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [m.name for m in members] == ["0_smoke-main", "1_smoke-main"]
    for member, seed in zip(members, (0, 1)):
        manifest = json.loads((member / "manifest.json").read_text())
        assert manifest["state"] == "succeeded" and manifest["seeds"]["seed"] == seed
        assert list((member / "swift").glob("v*/checkpoint-2/adapter_model.safetensors"))
    assert list((sweep_dir / ".submitit").glob("*/*_log.out"))  # submitit's own job files
