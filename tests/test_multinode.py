"""A node of rank > 0 waits for node 0's run manifest and checks the dataset bytes; its failure modes."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from patentqa.config import compose
from patentqa.data.corpus import DataError
from patentqa.train.train import wait_for_rank0


def node1_cfg(wait_s: float):
    return compose(["+exp=smoke", "launcher=cpu_multinode", "launcher.node_rank=1", "launcher.nnodes=2",
                    f"launcher.wait_for_rank0_s={wait_s}"])


def node0_writes(run_dir: Path, data_dir: Path, manifest_bytes: bytes, recorded: bytes) -> None:
    """Node 0's side: the dataset manifest on the shared filesystem and the run manifest naming its hash."""
    data_dir.mkdir(parents=True)
    (data_dir / "manifest.json").write_bytes(manifest_bytes)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "manifest.json").write_text(json.dumps({"dataset": {
        "dir": str(data_dir), "manifest_sha256": hashlib.sha256(recorded).hexdigest()}}), encoding="utf-8")


def test_node1_times_out_with_the_reason_when_node0_never_writes(tmp_path: Path, capsys) -> None:
    with pytest.raises(TimeoutError, match=r"node 1: node 0 wrote no .*manifest.json within 0 s; all nodes need the "
                                           r"same run dir on a shared filesystem"):
        wait_for_rank0(node1_cfg(0.2), tmp_path / "run", poll_s=0.05)
    assert "node 1: waiting up to 0 s" in capsys.readouterr().out
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # node 1 wrote nothing


def test_node1_stops_when_it_reads_other_dataset_bytes(tmp_path: Path) -> None:
    node0_writes(tmp_path / "run", tmp_path / "data", b'{"rows": 54}', recorded=b'{"rows": 53}')
    with pytest.raises(DataError, match=r"node 1: .*data/manifest.json differs from the one node 0 trained on"):
        wait_for_rank0(node1_cfg(5), tmp_path / "run", poll_s=0.05)


def test_node1_trains_from_node0s_dataset_when_the_bytes_match(tmp_path: Path) -> None:
    node0_writes(tmp_path / "run", tmp_path / "data", b'{"rows": 54}', recorded=b'{"rows": 54}')
    assert wait_for_rank0(node1_cfg(5), tmp_path / "run", poll_s=0.05) == tmp_path / "data"
