"""Shared fixtures: the synthetic patent set and the tiny models, built once and cached.

Both are cached under ``$PATENTQA_CACHE`` (default: ``<repo>/.cache``) so a second test run
reuses them; each builder writes atomically, so a killed run never leaves a half-built copy.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def cache_root() -> Path:
    return Path(os.environ.get("PATENTQA_CACHE", REPO / ".cache"))


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    path = SHARED / "reference"
    if not path.exists():
        pytest.skip(f"shared reference material not found at {path}")
    return path


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CCKS-layout patent set (12 documents, seed 0)."""
    from patentqa.data.synth import SynthSpec, generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SynthSpec(n_docs=12, seed=0))
    return out


@pytest.fixture(scope="session")
def tiny_vl() -> Path:
    """Directory of the tiny random Qwen2.5-VL (model, tokenizer, processor, chat template)."""
    from patentqa.tiny import tiny_qwen2_5_vl

    return tiny_qwen2_5_vl(cache_root() / "tiny")


@pytest.fixture(scope="session")
def tiny_embedder() -> Path:
    """Directory of the tiny random Qwen2-VL that stands in for GME."""
    from patentqa.tiny import tiny_qwen2_vl_embedder

    return tiny_qwen2_vl_embedder(cache_root() / "tiny")
