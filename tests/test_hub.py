"""One model source for every stage: a hub id resolves once to its local snapshot, offline, no network.

The tiny models are laid out in a temporary Hugging Face hub cache exactly as ``huggingface_hub``
stores a download (``models--ORG--NAME/refs/main`` + ``snapshots/REV/`` holding the files), with
``HF_HUB_OFFLINE=1`` and every outgoing connection refused.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import pytest
from omegaconf import OmegaConf

from patentqa.hub import ModelNotFound, model_dir, modelscope_id, resolve_model

REVISION = "0123456789abcdef0123456789abcdef01234567"
TINY_ID = "patentqa-test/tiny-qwen2_5_vl"
GME_ID = "patentqa-test/tiny-gme"


def lay_out_snapshot(cache: Path, repo_id: str, model: Path, modelscope: bool = False) -> Path:
    """``model``'s files symlinked into a hub cache under ``repo_id`` (HF layout, or ModelScope's)."""
    org, name = repo_id.split("/")
    repo = cache / ("models" if modelscope else "") / (f"{org}--{name}" if modelscope else f"models--{org}--{name}")
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for item in model.iterdir():
        (snapshot / item.name).symlink_to(item.resolve())
    return snapshot


@pytest.fixture()
def refused_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A connection attempt is refused, and fails the test even where a caller catches the error."""
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
    assert attempts == [], f"network access attempted: {attempts}"


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch, refused_network: None) -> None:
    """Offline by the hub's own switch too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture()
def hf_cache(tmp_path: Path, tiny_vl: Path, tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch,
             no_network: None) -> Path:
    cache = tmp_path / "hf" / "hub"
    lay_out_snapshot(cache, TINY_ID, tiny_vl)
    lay_out_snapshot(cache, GME_ID, tiny_embedder)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # the cache is HF_HOME/hub, as huggingface_hub has it
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return cache


def model_cfg(path: str, **extra: object) -> object:
    return OmegaConf.create({"path": path, "hub": "huggingface", "build_tiny": False, "image_factor": 28, **extra})


def test_a_hub_id_resolves_to_its_cached_snapshot_offline(hf_cache: Path) -> None:
    snapshot = (hf_cache / "models--patentqa-test--tiny-qwen2_5_vl" / "snapshots" / REVISION).resolve()
    assert resolve_model(TINY_ID) == str(snapshot)
    assert model_dir(model_cfg(TINY_ID)) == str(snapshot)  # what swift, transformers and vLLM are given
    assert (Path(resolve_model(TINY_ID)) / "config.json").is_file()


def test_a_missing_id_offline_names_the_model_and_the_cache(hf_cache: Path) -> None:
    with pytest.raises(ModelNotFound) as caught:
        resolve_model("Qwen/Qwen2.5-VL-32B-Instruct")
    message = str(caught.value)
    assert "'Qwen/Qwen2.5-VL-32B-Instruct'" in message and str(hf_cache) in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download Qwen/Qwen2.5-VL-32B-Instruct" in message


def test_a_local_dir_is_used_as_it_is(tiny_vl: Path, tmp_path: Path, no_network: None) -> None:
    assert resolve_model(tiny_vl) == str(tiny_vl.resolve())
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model(tmp_path / "no-such-model")


def test_modelscope_snapshot_offline(tmp_path: Path, tiny_vl: Path, monkeypatch: pytest.MonkeyPatch,
                                     no_network: None) -> None:
    snapshot = lay_out_snapshot(tmp_path / "ms", TINY_ID, tiny_vl, modelscope=True)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms"))
    assert model_dir(model_cfg(TINY_ID, hub="modelscope")) == str(snapshot.resolve())
    # ids that differ between the hubs come from ms-swift's registry (the one it downloads by)
    assert modelscope_id("Alibaba-NLP/gme-Qwen2-VL-7B-Instruct") == "iic/gme-Qwen2-VL-7B-Instruct"
    assert modelscope_id("Qwen/Qwen2.5-VL-32B-Instruct") == "Qwen/Qwen2.5-VL-32B-Instruct"
    with pytest.raises(ModelNotFound, match="iic/gme-Qwen2-VL-7B-Instruct"):  # offline: looked up under its own id
        resolve_model("Alibaba-NLP/gme-Qwen2-VL-7B-Instruct", "modelscope")


def test_swift_is_given_the_snapshot_so_use_hf_never_matters(hf_cache: Path) -> None:
    """The rendered ``swift sft`` argv carries the local snapshot, not the id; swift's own resolver returns
    a local dir unchanged whichever hub ``use_hf`` names (no hub is asked)."""
    from swift.utils.hub_utils import safe_snapshot_download

    from patentqa.config import compose
    from patentqa.train import swift_args

    cfg = compose(["+exp=lora_r8", f"model.path={TINY_ID}"])
    snapshot = swift_args.model_for_swift(cfg)
    args = swift_args.render(cfg, Path("/d/train.jsonl"), Path("/d/dev.jsonl"), Path("/r/swift"), "none", snapshot)
    argv = swift_args.to_argv(args)
    assert argv[argv.index("--model") + 1] == snapshot == resolve_model(TINY_ID)
    assert TINY_ID not in argv and "--use_hf" not in argv
    assert argv[argv.index("--check_model") + 1] == "false"
    swift_args.validate(args)
    assert safe_snapshot_download(snapshot, use_hf=True) == safe_snapshot_download(snapshot, use_hf=False) == snapshot


def test_dry_run_downloads_nothing_and_a_real_run_stops_on_a_missing_model(hf_cache: Path) -> None:
    from patentqa.config import compose
    from patentqa.train import swift_args

    dry = compose(["+exp=lora_r8", "dry_run=true"])
    assert swift_args.model_for_swift(dry) == "Qwen/Qwen2.5-VL-32B-Instruct"  # shown as the id, not fetched
    with pytest.raises(ModelNotFound, match="Qwen/Qwen2.5-VL-32B-Instruct"):
        swift_args.model_for_swift(compose(["+exp=lora_r8"]))


def test_a_dry_run_does_not_download_even_online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 refused_network: None) -> None:
    import huggingface_hub.constants

    from patentqa.config import compose
    from patentqa.train import swift_args

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once, at its import
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    dry = compose(["+exp=lora_r8", "dry_run=true"])
    assert swift_args.model_for_swift(dry) == "Qwen/Qwen2.5-VL-32B-Instruct"


def test_transformers_and_gme_load_the_cached_snapshot_on_cpu(hf_cache: Path, tmp_path: Path) -> None:
    """Both loaders resolve the ids through the cache, offline; tiny models may run on the CPU."""
    from patentqa.data.embed import GmeEmbedder
    from patentqa.data.prompts import style_prompt
    from patentqa.infer.engine import Sampling
    from patentqa.infer.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine.from_config(OmegaConf.create({"device": "auto", "batch_size": 2}), model_cfg(TINY_ID))
    try:
        assert engine.model.device.type == "cpu"
        assert engine.model.name_or_path == resolve_model(TINY_ID)
        assert len(engine.generate([style_prompt("部件3位于部件4的左侧", ["左侧"])], Sampling(max_new_tokens=2))) == 1
    finally:
        engine.close()
    embedder = GmeEmbedder(GME_ID, tmp_path / "emb", min_pixels=3136, max_pixels=12544,
                           query_instruction="Find an image that matches the given text.", progress=False)
    try:
        assert embedder.device == "cpu"
        assert embedder.embed_queries(["部件3"]).shape[0] == 1
    finally:
        close = getattr(embedder, "close", None)
        if close:
            close()


def test_model_source_and_device_keys_do_not_split_runs_into_variants() -> None:
    """A run recorded before model.hub/device existed and one with them are the same variant in a report."""
    from patentqa.eval.runs import differing_keys

    old = {"model": {"path": "Qwen/Qwen2.5-VL-32B-Instruct"}, "retrieval": {"name": "gme"}}
    new = {"model": {"path": "Qwen/Qwen2.5-VL-32B-Instruct", "hub": "modelscope", "device": "auto"}, "device": "auto",
           "retrieval": {"name": "gme", "hub": "modelscope"}}
    assert differing_keys([old, new])[1] == []


def test_the_hub_does_not_change_the_dataset_key() -> None:
    """The same GME weights from either hub embed the same: one dataset build, not two."""
    from patentqa.config import compose
    from patentqa.data.build import dataset_key

    modelscope = compose(["+exp=lora_r8", "model.hub=modelscope"])
    assert modelscope.retrieval.hub == "modelscope"
    assert dataset_key(modelscope) == dataset_key(compose(["+exp=lora_r8"]))
