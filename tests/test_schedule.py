"""The optimisation a run will do, printed by the dry run before launch (patentqa/train/schedule.py):
``+exp=lora_r8`` keeps the seed's global batch of 16 on 8 ZeRO-3 ranks, ~220 steps, a checkpoint and a dev
evaluation every 10 steps; the numbers come from the rows, not from the config."""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from patentqa.config import compose
from patentqa.data.build import dataset_dir
from patentqa.train.schedule import MIN_CHECKPOINTS, make_schedule, steps_of

SEED_ROWS = 781  # the seed's SFT file (tests/fixtures/seed_round_b_sft.jsonl)


def built(cfg, rows: int) -> Path:
    """A built train.jsonl of ``rows`` rows where the data stage would write it for ``cfg``."""
    path = dataset_dir(cfg) / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}\n" * rows, encoding="utf-8")
    return path


def lora_r8(tmp_path: Path, *overrides: str):
    return compose(["+exp=lora_r8", f"paths.root={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides])


def test_seed_recipe_on_8_ranks_keeps_global_batch_16_and_a_checkpoint_every_10_steps(tmp_path: Path) -> None:
    cfg = lora_r8(tmp_path)
    schedule = make_schedule(cfg, built(cfg, SEED_ROWS))
    assert (schedule.world_size, schedule.per_device, schedule.accumulation) == (8, 1, 2)
    assert schedule.global_batch == 16
    assert schedule.steps_per_epoch == math.ceil(math.ceil(SEED_ROWS / 8) / 2) == 49
    assert schedule.steps == 49 * 5 and schedule.checkpoints == math.ceil(245 / 10) == 25 >= 20
    assert schedule.dev_evaluations == 25 and not schedule.warnings
    text = schedule.format()
    assert "world size 8; global batch 16 = 1 per device × 2 accumulation × 8 rank(s)" in text
    assert "781 (built:" in text and "49 per epoch × 5 epochs = 245" in text and "checkpoints: 25" in text


def test_the_global_batch_stays_16_whatever_the_launcher(tmp_path: Path) -> None:
    local = lora_r8(tmp_path, "launcher=local")  # the seed's own layout: one process, accumulation 16
    two_nodes = lora_r8(tmp_path, "launcher=multinode", "launcher.nnodes=2")
    assert local.train.gradient_accumulation_steps == 16 and two_nodes.train.gradient_accumulation_steps == 1
    for cfg in (local, two_nodes):
        schedule = make_schedule(cfg, built(cfg, SEED_ROWS))
        assert schedule.global_batch == 16 and 240 <= schedule.steps <= 250
    with pytest.raises(Exception, match="cannot be split .* on 24 rank"):
        _ = lora_r8(tmp_path, "launcher=multinode", "launcher.nnodes=3").train.gradient_accumulation_steps


def test_fewer_than_three_checkpoints_warns(tmp_path: Path) -> None:
    cfg = lora_r8(tmp_path, "train.save_steps=200")
    schedule = make_schedule(cfg, built(cfg, SEED_ROWS))
    assert schedule.checkpoints == 2 < MIN_CHECKPOINTS
    assert "WARNING: this run leaves 2 checkpoint(s)" in schedule.format() and "train.save_steps=" in schedule.format()
    cfg = lora_r8(tmp_path, "train.save_steps=100")
    assert make_schedule(cfg, built(cfg, SEED_ROWS)).warnings == []  # 3 checkpoints: enough


def test_before_the_build_rows_are_estimated_from_the_600_real_questions(tmp_path: Path, reference: Path) -> None:
    """The CCKS layout with only the question file (no PDFs): the seed's ~220 steps, >= 20 checkpoints."""
    cfg = lora_r8(tmp_path)
    questions = Path(cfg.data.dir) / "train" / "train.jsonl"
    questions.parent.mkdir(parents=True)
    shutil.copy(reference / "seed_round_b_questions.jsonl", questions)
    schedule = make_schedule(cfg, dataset_dir(cfg) / "train.jsonl")
    assert "estimated from" in schedule.rows_source and "600 questions" in schedule.rows_source
    # 90% of the documents train (the seed's split_dataset_ratio 0.1); figure-only questions give a second row
    assert 600 * 0.8 < schedule.rows < SEED_ROWS
    assert schedule.global_batch == 16 and 200 <= schedule.steps <= 240 and schedule.checkpoints >= 20


def test_steps_are_the_count_transformers_itself_makes() -> None:
    """Cross-check with transformers' Trainer.set_initial_training_values on the per-rank dataloader length."""
    from transformers import Trainer

    for rows, ranks, per_device, accumulation, epochs in [(781, 8, 1, 2, 5), (781, 1, 1, 16, 5), (100, 2, 3, 4, 1.5),
                                                          (7, 8, 1, 2, 3)]:
        loader = [None] * math.ceil(rows / (per_device * ranks))  # DistributedSampler pads: ceil per rank
        stub = SimpleNamespace(get_total_train_batch_size=lambda args: 0, get_sp_size=lambda: 1,
                               num_examples=lambda dataloader: rows)
        args = SimpleNamespace(max_steps=-1, gradient_accumulation_steps=accumulation, num_train_epochs=epochs)
        expected = Trainer.set_initial_training_values(stub, args, loader)[-1]
        cfg = SimpleNamespace(train=SimpleNamespace(per_device_train_batch_size=per_device,
                                                    gradient_accumulation_steps=accumulation, num_train_epochs=epochs,
                                                    get=lambda key, default=None: None),
                              launcher=SimpleNamespace(get=lambda key, default=None, ranks=ranks:
                                                       {"nproc_per_node": ranks}.get(key)))
        assert steps_of(cfg, rows) == expected, (rows, ranks, per_device, accumulation, epochs)
