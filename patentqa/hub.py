"""Where a model's files come from: a hub id resolved once to a local snapshot directory.

``model.path`` (and GME's ``retrieval.model_path``) may be a local directory, used as it is,
or a hub id such as ``Qwen/Qwen2.5-VL-32B-Instruct``. ``resolve_model`` turns an id into the
local snapshot dir of ``model.hub`` (``huggingface``, the default, or ``modelscope``),
downloading it first when it is not there; that one path then goes to ``swift sft``,
transformers, vLLM and GME alike. Otherwise each library would fetch the id on its own:
ms-swift from ModelScope (its ``use_hf`` defaults to false), transformers and vLLM from the
Hugging Face hub, two 65 GB downloads into two caches for the 32B model.

Offline (``HF_HUB_OFFLINE=1``, for either hub) nothing is downloaded: an id whose snapshot is
absent stops with ``ModelNotFound`` naming the id and the cache dir searched. The cache dirs
are read from the environment at call time, as the hub libraries document them
(``HF_HUB_CACHE`` / ``HF_HOME``; ``MODELSCOPE_CACHE``).

Imports nothing of patentqa but ``tiny`` and ``config``, so every stage may use it.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from patentqa.config import cfg_get

HUBS = ("huggingface", "modelscope")
# files a model repo may carry that no loader here reads (other formats of the same weights);
# the same list ms-swift's own download skips (swift/utils/hub_utils.py safe_snapshot_download)
IGNORE_PATTERNS = ["*.zip", "*.gguf", "*.pth", "*.pt", "consolidated*", "onnx/*", "*.safetensors.md",
                   "*.msgpack", "*.onnx", "*.ot", "*.h5"]
_TRUE = {"1", "true", "yes", "on"}


class ModelNotFound(FileNotFoundError):
    """A model that is neither a local directory nor obtainable from its hub (offline, or download failed)."""


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set (1/true/yes/on): no hub is contacted, for either hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, by huggingface_hub's precedence: HF_HUB_CACHE, HF_HOME/hub, XDG, ~/.cache."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def modelscope_cache_dir() -> Path:
    """ModelScope's cache: MODELSCOPE_CACHE, else ~/.cache/modelscope/hub (modelscope.hub.utils.get_cache_dir)."""
    return Path(os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope/hub").expanduser()


def cache_dir(hub: str = "huggingface") -> Path:
    """Where ``hub``'s snapshots are kept."""
    return hf_cache_dir() if hub == "huggingface" else modelscope_cache_dir()


def is_local(ref: str) -> bool:
    """A path rather than a hub id: an existing directory, or written as a path (/, ./, ../, ~)."""
    return Path(ref).expanduser().is_dir() or ref.startswith(("/", "./", "../", "~"))


def resolve_model(ref: str | Path, hub: str = "huggingface", *, download: bool = True) -> str:
    """The local directory holding model ``ref``: a local dir as it is, a hub id as its snapshot dir.

    ``download=False`` only looks in the cache (the dry run: nothing fetched); like offline
    mode it raises ``ModelNotFound`` when the snapshot is absent.
    """
    ref = str(ref)
    if is_local(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise ModelNotFound(f"model directory {path} does not exist")
        return str(path.resolve())
    if hub not in HUBS:
        raise ValueError(f"model.hub must be one of {', '.join(HUBS)}, got {hub!r}")
    local_only = offline() or not download
    cache = str(cache_dir(hub))
    if hub == "huggingface":
        return _snapshot(ref, hub, local_only, cache)
    try:  # cached under the id as written: no registry lookup needed
        return _snapshot(ref, hub, True, cache)
    except ModelNotFound:
        return _snapshot(modelscope_id(ref), hub, local_only, cache)


@functools.lru_cache(maxsize=None)
def modelscope_id(repo_id: str) -> str:
    """The ModelScope id of a Hugging Face id where they differ (GME: Alibaba-NLP/... is iic/... there),
    from ms-swift's own model registry; other ids (Qwen/...) are the same on both hubs."""
    try:
        import swift.model  # noqa: F401 - importing it fills the registry
        from swift.model.model_meta import MODEL_MAPPING
    except ImportError:
        return repo_id
    for meta in MODEL_MAPPING.values():
        for group in meta.model_groups:
            for model in group.models:
                if model.hf_model_id == repo_id and model.ms_model_id:
                    return str(model.ms_model_id)
    return repo_id


@functools.lru_cache(maxsize=None)
def _snapshot(repo_id: str, hub: str, local_only: bool, cache_dir: str) -> str:
    """One lookup (or download) per id, hub, mode and cache in a process: every stage gets the same dir."""
    where = f"the {'Hugging Face' if hub == 'huggingface' else 'ModelScope'} cache {cache_dir}"
    try:
        if hub == "huggingface":
            from huggingface_hub import snapshot_download

            path = snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=local_only,
                                     ignore_patterns=IGNORE_PATTERNS)
        else:
            from modelscope import snapshot_download as ms_snapshot_download

            path = ms_snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=local_only,
                                        ignore_patterns=IGNORE_PATTERNS)
    except ImportError as error:
        raise ModelNotFound(f"model.hub={hub} needs its client library ({error})") from error
    except Exception as error:  # noqa: BLE001 - each hub client raises its own types
        if local_only:
            why = "offline mode is on (HF_HUB_OFFLINE=1)" if offline() else "this step does not download"
            raise ModelNotFound(
                f"model {repo_id!r} is not in {where} and {why}. Download it where the hub is reachable "
                f"({_download_hint(repo_id, hub, cache_dir)}) or set the model's path to a local directory") from error
        raise ModelNotFound(f"model {repo_id!r} could not be downloaded into {where}: {type(error).__name__}: "
                            f"{error}") from error
    return str(Path(path).resolve())


def _download_hint(repo_id: str, hub: str, cache_dir: str) -> str:
    if hub == "huggingface":
        return f"HF_HUB_CACHE={cache_dir} hf download {repo_id}"
    return f"MODELSCOPE_CACHE={cache_dir} modelscope download --model {repo_id}"


def model_dir(model_cfg: Any, *, download: bool = True) -> str:
    """The local dir of the ``model`` config: the tiny test model built first when ``model.build_tiny``,
    else ``model.path`` through ``resolve_model`` with ``model.hub``."""
    path = str(model_cfg.path)
    if cfg_get(model_cfg, "build_tiny", False):
        from patentqa.models import family_of

        path = str(family_of(model_cfg).build_tiny(Path(path).parent, cfg_get(model_cfg, "template")))
    return resolve_model(path, str(cfg_get(model_cfg, "hub", "huggingface") or "huggingface"), download=download)
