"""The run summary flags ranks that trained apart, from swift's log (``ranks_trained_apart``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from patentqa.config import compose
from patentqa.train.train import run_summary

# transformers' warning (transformers 5.19, training_args.py, verbatim) as swift's log shows it when torchrun's
# ranks each trained alone (CPU, no plugin)
APART_LOG = ("[rank1]: [WARNING|training_args.py:1875] torch.distributed process group is initialized, but "
             "parallel_mode != ParallelMode.DISTRIBUTED. In order to use Torch DDP, launch your script with "
             "`python -m torch.distributed.launch\n"
             "[INFO:swift] rank: 1, local_rank: 1, world_size: 2, local_world_size: 2\n")
ONE_JOB_LOG = "[INFO:swift] rank: 0, local_rank: 0, world_size: 2, local_world_size: 2\n"


@pytest.mark.parametrize(("launcher", "log", "flagged"), [
    ("cpu_ddp", APART_LOG, True),      # 2 ranks and the warning: flagged
    ("cpu_ddp", ONE_JOB_LOG, False),   # 2 ranks as one job: not flagged
    ("local", APART_LOG, False),       # one process: the warning cannot mean ranks apart
])
def test_ranks_trained_apart_follows_the_log(tmp_path: Path, capsys, launcher: str, log: str, flagged: bool) -> None:
    cfg = compose(["+exp=smoke", f"launcher={launcher}"])
    log_path = tmp_path / "logs" / "swift_sft.log"
    log_path.parent.mkdir()
    log_path.write_text(log, encoding="utf-8")
    summary = run_summary(cfg, tmp_path, log_path, wall_seconds=1.23)
    assert summary.get("ranks_trained_apart", False) is flagged
    assert summary["swift_world_size"] == 2 and summary["checkpoints"] == 0 and summary["wall_seconds"] == 1.2
    assert ("trained each alone" in capsys.readouterr().err) is flagged
