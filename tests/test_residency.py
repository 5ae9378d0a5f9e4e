"""One big model per process at a time (patentqa/residency.py): holds, releases, the JSONL record,
and the GME embedder, which holds the slot only while it computes (or inside a ``with`` block)."""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from patentqa import residency
from patentqa.data.build import gme_embedders
from patentqa.data.embed import GmeEmbedder


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "residency.jsonl"
    monkeypatch.setenv(residency.LOG_ENV, str(path))
    assert residency.alive() == [], f"a model leaked from an earlier test: {residency.alive()}"
    return path


def test_a_second_hold_raises_naming_the_first_and_release_frees_the_slot(log: Path) -> None:
    first = residency.hold("transformers", "/models/base")
    with pytest.raises(residency.ResidencyError, match="cannot load vllm /models/base: transformers:/models/base"):
        residency.hold("vllm", "/models/base")
    assert residency.alive() == ["transformers:/models/base"]
    first.release()
    first.release()  # idempotent
    second = residency.hold("vllm", "/models/base")
    second.release()
    events = residency.read_log(log)
    assert [(e["event"], e["kind"], e["alive"]) for e in events] == [
        ("load", "transformers", ["transformers:/models/base"]), ("release", "transformers", []),
        ("load", "vllm", ["vllm:/models/base"]), ("release", "vllm", [])]
    assert residency.overlaps(events) == []


def test_a_failed_load_releases_and_a_collected_owner_releases(log: Path) -> None:
    with pytest.raises(OSError):
        with residency.loading("gme", "/missing"):
            raise OSError("no such checkpoint")
    assert residency.alive() == []

    class Owner:
        pass

    owner = Owner()
    residency.hold("transformers", "leaked").bind(owner)
    del owner
    gc.collect()
    assert residency.alive() == []
    with residency.holding("swift sft", "/models/base"):
        assert residency.alive() == ["swift sft:/models/base"]
    assert residency.alive() == []


def test_overlaps_finds_two_models_alive_in_one_process() -> None:
    def event(kind: str, what: str, pid: int, time: float) -> dict:
        return {"event": kind, "kind": what, "name": "m", "pid": pid, "time": time, "alive": []}

    sequential = [event("load", "transformers", 1, 1), event("release", "transformers", 1, 2),
                  event("load", "vllm", 1, 3), event("release", "vllm", 1, 4)]
    assert residency.overlaps(sequential) == []
    nested = [event("load", "transformers", 1, 1), event("load", "vllm", 1, 2), event("release", "vllm", 1, 3)]
    assert residency.overlaps(nested) == ["vllm:m (pid 1) loaded while transformers:m (pid 1) alive"]
    two_processes = [event("load", "gme", 1, 1), event("load", "vllm", 2, 2)]
    assert residency.overlaps(two_processes) == []
    assert len(residency.overlaps(two_processes, across_processes=True)) == 1


def test_gme_is_loaded_only_while_it_computes_or_inside_with(tiny_embedder: Path, tmp_path: Path, log: Path) -> None:
    options = dict(min_pixels=16 * 28 * 28, max_pixels=64 * 28 * 28, query_instruction="q", progress=False,
                   device="cpu")
    embedder = GmeEmbedder(tiny_embedder, tmp_path / "a", **options)
    embedder.embed_queries(["部件1"])
    assert embedder._model is None and residency.alive() == []  # released after the computation
    with embedder:
        embedder.embed_queries(["部件2"])
        assert residency.alive() == [f"gme:{tiny_embedder}"]
        other = GmeEmbedder(tiny_embedder, tmp_path / "b", **options)
        with pytest.raises(residency.ResidencyError, match="gme:"):
            other.embed_queries(["部件3"])  # a second embedder (a cache miss) while the first is loaded
        vectors = embedder.embed_queries(["部件1", "部件4"])
    assert residency.alive() == [] and embedder._model is None
    assert vectors.shape == (2, 64) and np.isfinite(vectors).all()
    events = residency.read_log(log)
    assert [e["event"] for e in events] == ["load", "release", "load", "release"]
    assert residency.overlaps(events) == []


def test_build_finds_the_gme_embedders_of_a_retriever() -> None:
    class Gme:
        embedder = "e"

    class Hybrid:
        gme = Gme()

    assert gme_embedders(Gme()) == ["e"] and gme_embedders(Hybrid()) == ["e"] and gme_embedders(object()) == []


def test_the_sweep_holds_one_engine_at_a_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, log: Path) -> None:
    """A train=full sweep closes the base engine before it loads a checkpoint as the model, and back."""
    from omegaconf import OmegaConf

    from patentqa.eval import sweep
    from patentqa.tracking import Checkpoint

    class Engine:
        def __init__(self, model_cfg, adapters) -> None:
            self.held, self.adapters = residency.hold("fake", str(model_cfg.path)), list(adapters)

        def close(self) -> None:
            self.held.release()

    monkeypatch.setattr(sweep, "make_engine", lambda infer_cfg, model_cfg, adapters=(): Engine(model_cfg, adapters))
    cfg = OmegaConf.create({"infer": {"name": "fake"}, "model": {"path": "/base", "build_tiny": False}})
    full = [Checkpoint(path=tmp_path / f"checkpoint-{s}", step=s) for s in (2, 4)]
    for checkpoint in full:  # a whole model: config + weights, no adapter_config.json
        checkpoint.path.mkdir()
        (checkpoint.path / "config.json").write_text("{}")
    with sweep.Engines(cfg, ["/lora/checkpoint-1"]) as engines:
        base, adapter = engines.for_checkpoint(None)
        assert adapter is None and base.adapters == ["/lora/checkpoint-1"]  # vLLM sizes max_lora_rank from them
        for checkpoint in full + [None]:
            engine, adapter = engines.for_checkpoint(checkpoint)
            assert adapter is None and residency.alive() == [f"fake:{checkpoint.path if checkpoint else '/base'}"]
        assert engines.for_checkpoint(None)[0] is engine  # the same model: no reload
    assert residency.alive() == [] and engines.loads == 4 and engines.full_loads == 2
    assert residency.overlaps(residency.read_log(log)) == []
