"""No file the session wrote holds an API key: tests/conftest.py puts a fake ``WANDB_API_KEY`` and
``OPENAI_API_KEY`` in the environment of the whole session, so every training run (manifests,
config.yaml, Hydra's ``.hydra/``, ``.submitit/``, node 1's log, swift's args and logs, W&B offline
files, the media a W&B table stages inside them), every data cache (page thumbnails included) and every
infer/eval output the e2e tier writes (reports and their question browsers) is searched for them when the
session ends (conftest's ``pytest_sessionfinish``, in the controller once all xdist workers are done).
These tests show that search finds a planted key and fails the session.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, SESSION_SECRETS, files_holding


def test_a_planted_key_is_found(tmp_path: Path) -> None:
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("- x\n")
    assert files_holding([tmp_path], list(SESSION_SECRETS.values())) == []
    (tmp_path / "run" / "wandb.bin").write_bytes(b"\x00\x01" + SESSION_SECRETS["WANDB_API_KEY"].encode() + b"\x00")
    assert files_holding([tmp_path], list(SESSION_SECRETS.values())) == [str(tmp_path / "run" / "wandb.bin")]
    (tmp_path / "run" / "wandb.bin").unlink()  # planted here; this session's own search must not see it


PLANTING_TEST = '''
import os

def test_writes_the_key_into_a_file(tmp_path):
    (tmp_path / "wandb.bin").write_bytes(os.environ["WANDB_API_KEY"].encode())
'''


def test_a_session_that_writes_a_key_fails(tmp_path: Path) -> None:
    """A session (two xdist workers, as make test runs) of one passing test that writes the fake key into its
    tmp dir exits 1, naming the file."""
    (tmp_path / "test_planting.py").write_text(PLANTING_TEST)
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "PATENTQA_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-q", "-n", "2",
                           f"--basetemp={tmp_path / 'session'}", str(tmp_path / "test_planting.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    try:
        assert done.returncode == 1 and "1 passed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
        assert "FAILED no secrets: API keys written to" in done.stdout and "wandb.bin" in done.stdout, done.stdout
    finally:
        for path in (tmp_path / "session").rglob("wandb.bin"):
            path.unlink()  # planted by the inner session; this session's own search must not see it
