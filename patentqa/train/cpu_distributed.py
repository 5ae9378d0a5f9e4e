"""An ms-swift plugin (``swift sft --external_plugins THIS_FILE``) that makes several CPU ranks one job.

On a machine without an accelerator, accelerate's ``PartialState._prepare_backend`` finds no
backend for torchrun's ranks unless ``cpu=True``, and then reports one process:

- plain DDP: transformers warns "parallel_mode != ParallelMode.DISTRIBUTED" and every rank
  trains alone on its shard (no gradient all-reduce: N independent runs, not one job);
- ZeRO-3: DeepSpeed's own comm sees the real world size, accelerate sees 1, and DeepSpeed
  stops before step 1 ("train_batch_size is not equal to micro_batch_per_gpu *
  gradient_acc_step * world_size"). ``ACCELERATE_USE_CPU=true`` flips the disagreement and
  leaves ZeRO-3's partitioned weights ungathered ("Padding_idx must be within num_embeddings").

This patch answers gloo + MULTI_CPU there, so accelerate, transformers and DeepSpeed agree on
the world size. It changes nothing where CUDA (or another accelerator) is present or with one
process. ``launcher.cpu_ranks: true`` (cpu_ddp, cpu_multinode, cpu_zero3) passes it to swift.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType

_prepare_backend = PartialState._prepare_backend


def _cpu_ranks_backend(self: Any, cpu: bool = False, sagemaker_dp: bool = False,
                       backend: str | None = None) -> tuple[str | None, Any]:
    found, distributed_type = _prepare_backend(self, cpu, sagemaker_dp, backend)
    if found is None and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        return "gloo", DistributedType.MULTI_CPU
    return found, distributed_type


def _destroy_process_group() -> None:
    """Close gloo before the interpreter tears its threads down."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


_exit_codes: list[Any] = []
_sys_exit = sys.exit


def _recording_exit(code: Any = None) -> None:
    """``sys.exit`` that remembers its code, so the exit hook below knows a failure from a success."""
    _exit_codes.append(code)
    _sys_exit(code)


def _leave_after_success() -> None:
    """A CPU rank that ended well leaves without C++ teardown. Even with gloo closed, a rank may abort at exit
    ("terminate called without an active exception", SIGABRT) after training and saving, and torchrun then
    reports the whole job failed (a 2-rank ZeRO-3 run once in three; a two-node run once in ~6 on this CPU).
    An uncaught exception or a non-zero ``sys.exit`` exits as Python would."""
    _destroy_process_group()
    if hasattr(sys, "last_value") or any(code not in (None, 0) for code in _exit_codes):
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


PartialState._prepare_backend = _cpu_ranks_backend
if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
    sys.exit = _recording_exit
    atexit.register(_leave_after_success)
