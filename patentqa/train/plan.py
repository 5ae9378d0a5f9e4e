"""The dry-run plan: what a training run will hold, computed on the meta device (no weights).

``python -m patentqa.train +exp=lora_r8 dry_run=true`` prints it. The model is built from its
config on PyTorch's meta device: a local ``model.path`` gives its ``config.json``; a hub id
without local files uses the published numbers in the model config group (``model.architecture``,
each with its source). On it:

- ``params``: total and per tower (vision tower, language model, output head);
- ``trainable``: the LoRA parameters peft attaches to the modules swift's ``all-linear``
  resolves to (swift's own ``get_multimodal_target_regex``, with ``freeze_vit``/``freeze_aligner``
  as configured), or every unfrozen parameter for full fine-tuning;
- ``memory``: DeepSpeed's own ZeRO-3 estimator (``estimate_zero3_model_states_mem_needs``:
  model states only, no activations) per GPU, for full fine-tuning and for the trainable set
  plus the frozen bf16 weights partitioned over the GPUs; and the host RAM a node needs: the
  estimator's CPU figure (zero.Init loading, offloaded states) plus ``HOST_GIB_PER_RANK`` a process;
- ``tokens``: prompt tokens per training row by prompt form: the built dataset's rows when
  they exist, else an A4 page at each form's pixel budget plus the template text.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from omegaconf import DictConfig, OmegaConf

A4_PAGE = (3508, 2480)  # (height, width): an A4 scan at 300 DPI, the form the real patents come in


def form_pages(budgets: dict[str, int], min_tokens: int, factor: int) -> dict[str, tuple[int, int]]:
    """(height, width) of an A4 page rendered at each form's budget of visual tokens (``factor`` px a token)."""
    from qwen_vl_utils import smart_resize

    return {form: smart_resize(*A4_PAGE, factor=factor, min_pixels=min_tokens * factor ** 2,
                               max_pixels=tokens * factor ** 2) for form, tokens in budgets.items()}
IMAGES_PER_FORM = {"with_context": 3, "figure_only": 1, "document": 2}  # asked page + k=2 retrieved pages
GIB = 1024 ** 3
HOST_GIB_PER_RANK = 6  # host RAM of one training process beyond model states: CUDA context, torch, a dataloader worker


@dataclass
class Plan:
    """The numbers the dry run prints (see module doc)."""

    model: str
    source: str
    params: dict[str, int]
    trainable: int
    trainable_modules: list[str]
    tuner: str
    gpus: int
    memory_gib: dict[str, float]
    tokens: dict[str, dict[str, float]]
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        p, total = self.params, self.params["total"]
        towers = " + ".join(f"{name} {_b(n)}" for name, n in p.items() if name != "total")
        lines = [f"plan: {self.model} on the meta device ({self.source})",
                 f"  params:    {_b(total)} total = {towers}",
                 f"  trainable: {self.trainable:,} ({self.trainable / total:.3%}) {self.tuner}; "
                 f"modules: {', '.join(self.trainable_modules) or 'none'}"]
        m = self.memory_gib
        offload = f" with CPU offload ({m['cpu_per_node']:.0f} GiB of CPU RAM per node)" if m.get("cpu_per_node") else ""
        lines.append(f"  memory:    ZeRO-3 on {self.gpus} GPU(s){offload}, DeepSpeed estimate per GPU (model states, no "
                     f"activations): this run {m['this_run']:.1f} GiB; full fine-tuning without offload "
                     f"{m['full_finetune']:.1f} GiB; the seed's run used ~300 GB over 8 GPUs (~{300 / 8:.1f} GB each, "
                     "activations included)")
        lines.append(f"  host RAM:  ~{m['host_per_node']:.0f} GiB per node (DeepSpeed's CPU estimate for this run + "
                     f"{HOST_GIB_PER_RANK} GiB a rank); a SLURM job asks for hydra.launcher.mem_gb")
        forms = "; ".join(f"{form} {t['tokens']:,.0f} ({t['images']:.0f} image(s) × {t['image_tokens']:,.0f} + "
                          f"{t['text_tokens']:,.0f} text)" for form, t in self.tokens.items())
        lines.append(f"  tokens:    prompt tokens per training row: {forms}")
        lines += [f"  note:      {note}" for note in self.notes]
        return "\n".join(lines)


def _b(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def model_config(model_cfg: DictConfig) -> tuple[Any, str]:
    """(transformers config, where it came from): a local config.json, else ``model.architecture``."""
    from transformers import AutoConfig

    path = Path(str(model_cfg.path))
    if (path / "config.json").is_file():
        return AutoConfig.from_pretrained(str(path)), f"{path}/config.json"
    arch = model_cfg.get("architecture")
    if arch is None:
        raise ValueError(f"model {model_cfg.name}: {path} has no config.json here and conf/model/{model_cfg.name}.yaml "
                         "has no architecture block to build it from")
    arch = OmegaConf.to_container(arch, resolve=True)
    source = arch.pop("source", "model.architecture")
    # the model family's own config class (Qwen2_5_VLConfig, Qwen3VLConfig, ...), picked by model.model_type; the
    # block's other keys (tie_word_embeddings, MiniCPM-V's insert_layer_id, ...) are that class's own
    return AutoConfig.for_model(str(model_cfg.model_type), **{"tie_word_embeddings": False, **arch}), source


def meta_model(config: Any) -> Any:
    """The model class for ``config``, instantiated on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def count_params(module: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def tower_params(model: Any) -> dict[str, int]:
    """Total and per tower: vision tower (the family's ``vision_modules``: ``model.visual``, MiniCPM-V's
    ``vision_tower`` + ``merger``), language model, output head."""
    from patentqa.models import family

    vision = family(model.config.model_type).vision_modules
    language, head = model.model.language_model, model.get_output_embeddings()
    return {"total": count_params(model),
            "vision tower": sum(count_params(getattr(model.model, name)) for name in vision),
            "language model": count_params(language), "lm_head": count_params(head)}


def lora_targets(model: Any, model_type: str, train_cfg: DictConfig) -> str:
    """swift's regex for ``target_modules: all-linear`` on this multimodal model."""
    from swift.model.register import MODEL_MAPPING
    from swift.utils import get_multimodal_target_regex

    targets = train_cfg.get("target_modules")
    if targets != "all-linear":
        return str(targets)
    model.model_meta = SimpleNamespace(model_arch=MODEL_MAPPING[model_type].model_arch)
    return get_multimodal_target_regex(model, freeze_llm=False, freeze_vit=bool(train_cfg.get("freeze_vit", True)),
                                       freeze_aligner=bool(train_cfg.get("freeze_aligner", True)))


def trainable_params(model: Any, model_type: str, train_cfg: DictConfig) -> tuple[int, list[str], str]:
    """(trainable parameters, module kinds they sit on, tuner description)."""
    tuner = str(train_cfg.get("tuner_type", "lora"))
    if tuner == "full":
        from patentqa.models import family

        vision = tuple(f"model.{name}" for name in family(model.config.model_type).vision_modules)
        frozen = vision if train_cfg.get("freeze_vit", True) else ()
        n = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(frozen))
        return n, ["every parameter" + (" outside the vision tower" if frozen else "")], "full fine-tuning"
    from peft import LoraConfig, get_peft_model

    regex = lora_targets(model, model_type, train_cfg)
    peft_model = get_peft_model(model, LoraConfig(r=int(train_cfg.lora_rank), lora_alpha=int(train_cfg.lora_alpha),
                                                  target_modules=regex, lora_dropout=0.0))
    n = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    names = [name for name, module in peft_model.named_modules() if hasattr(module, "lora_A") and module.lora_A]
    kinds = sorted({name.rsplit(".", 1)[-1] for name in names})
    prefixes = sorted({re.sub(r"\.layers\.\d+\..*$", "", name.replace("base_model.model.", "")) for name in names})
    return n, [f"{len(names)} modules ({', '.join(kinds)}) in {', '.join(prefixes)}"], \
        f"LoRA r{train_cfg.lora_rank} α{train_cfg.lora_alpha} on all-linear"


def zero3_memory_gib(total: int, trainable: int, largest_layer: int, gpus: int, offload: bool = False,
                     ranks_per_node: int | None = None) -> dict[str, float]:
    """DeepSpeed's ZeRO-3 model-state estimate per GPU: all parameters trained without offload, and this
    run (its trainable set, with CPU offload of optimizer and parameters when ``offload``), plus the
    CPU RAM per node the offload needs and the host RAM a node needs in all (``ranks_per_node`` processes)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    def estimate(params: int, cpu: bool) -> tuple[int, int]:
        cpu_mem, gpu_mem, _ = estimate_zero3_model_states_mem_needs(params, largest_layer, num_gpus_per_node=gpus,
                                                                    cpu_offload=cpu, cpu_offload_params=cpu)
        return gpu_mem, cpu_mem

    frozen_bf16 = 2 * (total - trainable) / gpus  # frozen weights: bf16, partitioned, no grads or optimizer state
    gpu, cpu = estimate(trainable, offload)
    this_run = gpu + (0 if offload else frozen_bf16)  # offloaded: the frozen weights live in CPU RAM too
    cpu_states = cpu + (2 * (total - trainable) if offload else 0)
    return {"full_finetune": estimate(total, False)[0] / GIB, "this_run": this_run / GIB,
            "cpu_per_node": cpu_states / GIB if offload else 0.0,
            "host_per_node": cpu_states / GIB + HOST_GIB_PER_RANK * (ranks_per_node or gpus)}


def largest_layer_params(model: Any) -> int:
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def prompt_tokens(cfg: DictConfig, tokenizer: Any, rows_file: Path | None) -> dict[str, dict[str, float]]:
    """Mean (and largest) prompt tokens per training row by form: from the rows when built, else an A4 page
    per image."""
    from qwen_vl_utils import smart_resize

    from patentqa.models import family_of

    factor = int(cfg.model.image_factor)
    family, slices = family_of(cfg.model), cfg.model.get("slices")  # tokens of a page as the family counts them
    by_form: dict[str, list[tuple[int, int, int]]] = {}
    if rows_file is not None and rows_file.is_file():
        from PIL import Image

        from patentqa.tracking import read_jsonl

        for row in read_jsonl(rows_file):
            budget = row.get("chat_template_kwargs", {})
            image_tokens = []
            for image in row["images"]:
                with Image.open(image) as page:
                    w, h = page.size
                rh, rw = smart_resize(h, w, factor=factor, min_pixels=budget.get("min_pixels", 3136),
                                      max_pixels=budget.get("max_pixels", 1_000_000))
                image_tokens.append(family.image_tokens(rh, rw, slices))
            text = len(tokenizer(row["messages"][0]["content"].replace("<image>", ""))["input_ids"])
            by_form.setdefault(row.get("form", "?"), []).append((len(image_tokens), sum(image_tokens), text))
    else:
        from patentqa.data.build import prompt_config
        from patentqa.data.prompts import PageImage, build_prompt

        config = prompt_config(cfg)
        page = PageImage(10, "page.jpg")
        question = "在文件中第10页的示意图中，部件4相对于部件5的位置关系是？"  # a typical round-B page question
        for form, n in IMAGES_PER_FORM.items():
            prompt = build_prompt(config, question if form != "document" else "该专利要解决的技术问题是什么？", form,
                                  page if form != "document" else None, [page] * (n - (form != "document")))
            h, w = smart_resize(*A4_PAGE, factor=factor, min_pixels=config.min_pixels, max_pixels=config.budget(form))
            text = len(tokenizer(prompt.text(""))["input_ids"])
            by_form[form] = [(n, n * family.image_tokens(h, w, slices), text)]
    out = {}
    for form, rows in sorted(by_form.items()):
        images = sum(r[0] for r in rows) / len(rows)
        image_tokens = sum(r[1] for r in rows) / len(rows)
        text = sum(r[2] for r in rows) / len(rows)
        out[form] = {"rows": len(rows), "images": images, "image_tokens": image_tokens / max(images, 1),
                     "text_tokens": text, "tokens": image_tokens + text, "max_tokens": max(r[1] + r[2] for r in rows)}
    return out


def plan_tokenizer(cfg: DictConfig) -> tuple[Any, str | None]:
    """The model's own tokenizer when it is on disk; else the tiny model's (a stand-in, said so)."""
    from transformers import AutoTokenizer

    path = Path(str(cfg.model.path))
    if (path / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(path)), None
    from patentqa.models import family_of

    tiny = family_of(cfg.model).build_tiny(Path(cfg.paths.cache_dir) / "tiny", cfg.model.get("template"))
    return AutoTokenizer.from_pretrained(str(tiny)), (
        f"text tokens counted with the tiny model's tokenizer ({path} is not on disk); Qwen's own tokenizer "
        "packs Chinese tighter, so text counts are an upper bound; image tokens are exact")


def make_plan(cfg: DictConfig, rows_file: Path | None = None) -> Plan:
    """The plan of ``cfg``'s training run (see module doc)."""
    config, source = model_config(cfg.model)
    model = meta_model(config)
    params = tower_params(model)
    largest = largest_layer_params(model)
    trainable, modules, tuner = trainable_params(model, str(cfg.model.model_type), cfg.train)
    from patentqa.config import world_size

    gpus = world_size(cfg)
    tokenizer, note = plan_tokenizer(cfg)
    return Plan(model=str(cfg.model.path), source=source, params=params, trainable=trainable,
                trainable_modules=modules, tuner=tuner, gpus=gpus,
                memory_gib=zero3_memory_gib(params["total"], trainable, largest, gpus,
                                            offload="offload" in str(cfg.launcher.get("deepspeed") or ""),
                                            ranks_per_node=int(cfg.launcher.get("nproc_per_node") or 1)),
                tokens=prompt_tokens(cfg, tokenizer, rows_file), notes=[note] if note else [])
