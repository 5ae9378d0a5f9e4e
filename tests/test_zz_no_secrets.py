"""Runs last (file order): no file any test wrote holds the session's fake API keys.

tests/conftest.py puts a fake ``WANDB_API_KEY`` and ``OPENAI_API_KEY`` in the environment of the whole
session, so every training run (manifests, config.yaml, Hydra's ``.hydra/``, ``.submitit/``, node 1's
log, swift's args and logs, W&B offline files), every data cache and every infer/eval output the e2e
tier writes is searched here.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import REPO, SESSION_SECRETS, cache_root


def files_holding(roots: list[Path], secrets: list[str]) -> list[str]:
    """Files under ``roots`` (binary ones too) that contain any of ``secrets``."""
    roots = [str(r) for r in roots if r.exists()]
    if not roots:
        return []
    args = [arg for secret in secrets for arg in ("-e", secret)]
    found = subprocess.run(["grep", "-rlaF", *args, *roots], capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr  # 1: nothing found; 2: grep failed
    return found.stdout.splitlines()


def test_a_planted_key_is_found(tmp_path: Path) -> None:
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "overrides.yaml").write_text("- x\n")
    assert files_holding([tmp_path], list(SESSION_SECRETS.values())) == []
    (tmp_path / "run" / "wandb.bin").write_bytes(b"\x00\x01" + SESSION_SECRETS["WANDB_API_KEY"].encode() + b"\x00")
    assert files_holding([tmp_path], list(SESSION_SECRETS.values())) == [str(tmp_path / "run" / "wandb.bin")]
    (tmp_path / "run" / "wandb.bin").unlink()  # planted here; the session-wide search below must not see it


def test_no_file_the_session_wrote_holds_a_key(tmp_path_factory: pytest.TempPathFactory) -> None:
    roots = [tmp_path_factory.getbasetemp(), cache_root(), REPO / "runs", REPO / "outputs", REPO / "multirun"]
    leaked = files_holding(roots, list(SESSION_SECRETS.values()))
    assert leaked == [], f"API keys written to: {leaked[:20]}"
