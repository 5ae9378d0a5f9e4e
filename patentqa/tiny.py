"""Tiny random Qwen2.5-VL / Qwen2-VL checkpoints for tests, built offline in seconds.

Nothing is downloaded: a byte-level BPE tokenizer is trained on a small embedded Chinese
patent corpus plus the synthetic patents' word lists (so their answers are a few tokens,
not runs of bytes), padded up to id 151642, and Qwen's special tokens are added at their
real ids (151643-151664). The filler ids no text encodes to get zero embedding and output
rows, so an untrained model spreads its guesses over real tokens, not 150k fillers. ms-swift hard-codes those ids (``<|image_pad|>`` = 151655); a tiny
model with other ids trains, but never expands image tokens.

    tiny_qwen2_5_vl(cache_dir)        -> cache_dir/qwen2_5_vl      (answerer, 28 px a visual token)
    tiny_qwen3_vl(cache_dir)          -> cache_dir/qwen3_vl        (answerer, 32 px a visual token)
    tiny_qwen2_vl_embedder(cache_dir) -> cache_dir/qwen2_vl_gme    (GME-shaped embedder)
    tiny_answerer(model_type, cache_dir): the answerer of a swift model type (``model.build_tiny``)

Each directory holds config, safetensors weights, tokenizer, processor, chat template,
``generation_config.json`` and a ``tiny.json`` marker with the recipe digest; a changed
recipe rebuilds. Builds go to a temp dir next to the target and are moved into place with
``os.replace``, so a killed build never leaves a half model.

Each family keeps its own chat template (a recipe's ``chat_template``, else Qwen2.5-VL's): Qwen3-VL's
has no default system prompt.

CLI: ``python -m patentqa.tiny out_dir=DIR`` builds all three and prints the paths.

This module imports only the leaf word list ``patentqa.data.synth.vocab`` so every stage may use it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

RECIPE_VERSION = 3
SEED = 0

# Qwen2.5 / Qwen2.5-VL added tokens, in id order from 151643 (tokenizer_config.json of the
# real checkpoints). The first 14 are special; the last 8 are ordinary added tokens.
FIRST_SPECIAL_ID = 151643
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",  # 151643
    "<|im_start|>",  # 151644
    "<|im_end|>",  # 151645
    "<|object_ref_start|>",  # 151646
    "<|object_ref_end|>",  # 151647
    "<|box_start|>",  # 151648
    "<|box_end|>",  # 151649
    "<|quad_start|>",  # 151650
    "<|quad_end|>",  # 151651
    "<|vision_start|>",  # 151652
    "<|vision_end|>",  # 151653
    "<|vision_pad|>",  # 151654
    "<|image_pad|>",  # 151655
    "<|video_pad|>",  # 151656
)
EXTRA_TOKENS: tuple[str, ...] = (
    "<tool_call>",  # 151657
    "</tool_call>",  # 151658
    "<|fim_prefix|>",  # 151659
    "<|fim_middle|>",  # 151660
    "<|fim_suffix|>",  # 151661
    "<|fim_pad|>",  # 151662
    "<|repo_name|>",  # 151663
    "<|file_sep|>",  # 151664
)
TOKENIZER_LEN = FIRST_SPECIAL_ID + len(SPECIAL_TOKENS) + len(EXTRA_TOKENS)  # 151665, as Qwen
VOCAB_SIZE = 151680  # embedding rows: >= TOKENIZER_LEN, a multiple of 64

OUTPUT_ROW_STD = 0.5  # lm_head init; the default 0.02 caps logits near 0.2 and LoRA cannot learn
BPE_VOCAB_SIZE = 4000  # learned merges/tokens before the filler entries

CORPUS = """\
本发明公开了一种折叠式电动自行车车架，包括主车架、前叉组件、后平叉和折叠机构。
所述折叠机构位于主车架的中部，所述锁紧件设置在折叠机构的左侧，所述把手位于前叉组件的上方。
权利要求1：一种散热装置，其特征在于，包括壳体、风扇和散热片，所述风扇位于壳体的右侧，
所述散热片设置在风扇的下方，所述壳体的上方设有进风口，所述出风口位于壳体的左侧。
权利要求2：根据权利要求1所述的散热装置，其特征在于，所述散热片的数量为12片，间距为3毫米。
图1为本实用新型的结构示意图；图2为图1中A部的局部放大图；图3为部件4的剖视图。
附图标记说明：1-底座，2-支撑杆，3-连接板，4-转轴，5-电机，6-齿轮，7-传动带，8-卡扣，9-弹簧，10-螺栓。
部件编号为5的电机位于底座的右侧上方，编号为3的连接板位于支撑杆的左侧下方。
在文件中第10页的示意图中，编号为7的部件是什么？答：传动带。
在文件中第3页的示意图中，部件6位于部件5的哪一侧？答：左侧。
该专利的发明名称是什么？该专利要解决的技术问题是什么？该装置的有益效果是结构简单、成本低、便于维护。
说明书摘要：本实用新型涉及机械技术领域，具体涉及一种自动化夹持装置，包括机架、气缸、夹爪和控制器。
实施例一：如图4所示，所述夹爪通过销轴与连接块铰接，所述气缸的活塞杆与连接块固定连接。
上方 下方 左侧 右侧 前侧 后侧 内侧 外侧 中部 顶部 底部 位于 部件 编号 示意图 附图 第 页
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 100 2025 CN 202310123456.7
The invention relates to a folding frame; claim 1 discloses a heat sink with a fan on the left side.
"""

# One user/assistant turn's list content, as both Qwen-VL families' released templates render it.
_CONTENT_PARTS = (
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
)

# The chat template of the released Qwen2.5-VL-*-Instruct checkpoints (chat_template.json).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    + _CONTENT_PARTS +
    "{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TEXT_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,  # head_dim 32 (vLLM's CPU attention rejects 16); mrope_section sums to head_dim / 2
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "max_window_layers": 2,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.1,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "pad_token_id": 151643,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
}
_TOKEN_IDS: dict[str, Any] = {
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": False,
}

QWEN2_5_VL_RECIPE: dict[str, Any] = {
    "name": "qwen2_5_vl",
    "text_config": _TEXT_COMMON,
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
    },
}
QWEN2_VL_GME_RECIPE: dict[str, Any] = {
    "name": "qwen2_vl_gme",
    "text_config": _TEXT_COMMON,
    "vision_config": {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": 64,  # output width = text hidden size
        "mlp_ratio": 2,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}

# The chat template of the released Qwen3-VL-*-Instruct checkpoints, as it renders the messages this project
# sends (an optional system message, then user/assistant turns of text and image parts; no tools, no
# reasoning_content): the same strings, written compactly. Unlike Qwen2.5-VL's there is no default system
# prompt, as ms-swift's ``qwen3_vl`` template (default_system None).
QWEN3_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    + _CONTENT_PARTS +
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN3_VL_RECIPE: dict[str, Any] = {
    "name": "qwen3_vl",
    "text_config": {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 32,  # vLLM's CPU attention rejects 16; mrope_section sums to head_dim / 2
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "initializer_range": 0.1,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 6, 6],
                            "mrope_interleaved": True},
    },
    "vision_config": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 16,  # × merge 2: 32 px a visual token, as the released checkpoints
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 256,
        "deepstack_visual_indexes": [0],
    },
    # the released preprocessor_config.json: 16 px patches, merge 2, mean/std 0.5, 64 to 16384 visual tokens
    "image_processor": {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
                        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                        "size": {"shortest_edge": 65536, "longest_edge": 16777216}},
    "chat_template": QWEN3_VL_CHAT_TEMPLATE,
}


def tiny_qwen2_5_vl(cache_dir: str | Path) -> Path:
    """Directory of a tiny random Qwen2.5-VL (``cache_dir/qwen2_5_vl``), built if missing."""
    return _cached(Path(cache_dir) / "qwen2_5_vl", QWEN2_5_VL_RECIPE, _build_qwen2_5_vl)


def tiny_qwen3_vl(cache_dir: str | Path) -> Path:
    """Directory of a tiny random Qwen3-VL (``cache_dir/qwen3_vl``), built if missing."""
    return _cached(Path(cache_dir) / "qwen3_vl", QWEN3_VL_RECIPE, _build_qwen3_vl)


def tiny_answerer(model_type: str, cache_dir: str | Path) -> Path:
    """The tiny answerer for a swift ``model_type`` (qwen2_5_vl or qwen3_vl), built into ``cache_dir`` if missing."""
    builders = {"qwen2_5_vl": tiny_qwen2_5_vl, "qwen3_vl": tiny_qwen3_vl}
    if model_type not in builders:
        raise ValueError(f"no tiny model for model_type {model_type!r}; there is one for {', '.join(builders)}")
    return builders[model_type](cache_dir)


def tiny_qwen2_vl_embedder(cache_dir: str | Path) -> Path:
    """Directory of a tiny random Qwen2-VL shaped like GME (``cache_dir/qwen2_vl_gme``)."""
    return _cached(Path(cache_dir) / "qwen2_vl_gme", QWEN2_VL_GME_RECIPE, _build_qwen2_vl)


def recipe_digest(recipe: dict[str, Any]) -> str:
    """Hash of everything that shapes a tiny model; the marker stores it."""
    blob = json.dumps(
        {
            "version": RECIPE_VERSION,
            "seed": SEED,
            "recipe": recipe,
            "corpus": tokenizer_corpus(),
            "chat_template": CHAT_TEMPLATE,
            "tokens": [SPECIAL_TOKENS, EXTRA_TOKENS, BPE_VOCAB_SIZE, OUTPUT_ROW_STD],
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def tokenizer_corpus() -> list[str]:
    """CORPUS lines plus every string in the synthetic patents' word lists."""
    from patentqa.data.synth import vocab as synth_vocab

    def strings(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, (tuple, list)):
            return [s for v in value for s in strings(v)]
        return []

    lines = CORPUS.splitlines()
    for name in sorted(vars(synth_vocab)):
        if name.isupper():
            lines += strings(getattr(synth_vocab, name))
    return lines


def _is_current(target: Path, digest: str) -> bool:
    marker = target / "tiny.json"
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("digest") == digest
    except (OSError, ValueError):
        return False


def _cached(target: Path, recipe: dict[str, Any], build: Callable[[Path, dict[str, Any]], None]) -> Path:
    """Return ``target`` if its marker matches the recipe, else build it atomically."""
    digest = recipe_digest(recipe)
    if _is_current(target, digest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        build(tmp, recipe)
        marker = {"recipe_version": RECIPE_VERSION, "digest": digest, "name": recipe["name"], "seed": SEED}
        (tmp / "tiny.json").write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        if target.exists():  # stale recipe: move the old copy aside first
            if _is_current(target, digest):  # a concurrent build won the race
                return target
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "model")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_current(target, digest):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_tokenizer() -> Any:
    """Byte-level BPE trained on ``tokenizer_corpus()``, padded to id 151642, Qwen's added tokens after."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    pretokenize_regex = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pretokenize_regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Filler entries: in the vocab, unreachable by any merge, so never produced by encoding.
    next_id = len(vocab)
    while next_id < FIRST_SPECIAL_ID:
        vocab[f"<filler_{next_id}>"] = next_id
        next_id += 1

    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",  # added first, so it lands on 151643; switched below
        pad_token="<|endoftext|>",
        model_max_length=32768,
        errors="replace",
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in EXTRA_TOKENS])
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.eos_token = "<|im_end|>"  # as in the released *-Instruct tokenizers
    tokenizer.chat_template = CHAT_TEMPLATE
    for i, tok in enumerate(SPECIAL_TOKENS + EXTRA_TOKENS):
        got = tokenizer.convert_tokens_to_ids(tok)
        if got != FIRST_SPECIAL_ID + i:
            raise RuntimeError(f"tiny tokenizer: {tok} got id {got}, expected {FIRST_SPECIAL_ID + i}")
    if len(tokenizer) != TOKENIZER_LEN:
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {TOKENIZER_LEN}")
    return tokenizer


def _save_common(out: Path, model: Any, processor: Any) -> None:
    from transformers import GenerationConfig

    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    GenerationConfig(
        bos_token_id=151643,
        eos_token_id=[151645, 151643],
        pad_token_id=151643,
        do_sample=False,
    ).save_pretrained(out)


def _seeded_model(model_cls: Any, config: Any, first_filler: int) -> Any:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = model_cls(config)
        with torch.no_grad():
            # Output rows at a trained model's scale (|row| ~ 4, logits up to ~30), so
            # LoRA on the layers below can make confident predictions through a frozen head.
            model.get_output_embeddings().weight.normal_(0.0, OUTPUT_ROW_STD)
            # Filler ids never occur in text: zero rows, logit 0, never a greedy pick once
            # a real token scores above 0.
            for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
                matrix[first_filler:FIRST_SPECIAL_ID] = 0.0
    return model.eval()


def _first_filler(tokenizer: Any) -> int:
    """The first filler id: the trained BPE occupies the ids below it."""
    return min(i for tok, i in tokenizer.get_vocab().items() if tok.startswith("<filler_"))


def _image_processor(cls: Any) -> Any:
    # pixel budget of the released checkpoints' preprocessor_config.json (min/max_pixels)
    return cls(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384})


def _build(out: Path, recipe: dict[str, Any], config_cls: Any, model_cls: Any, processor_cls: Any,
           video_processor_cls: Any = None) -> None:
    """One tiny model of a Qwen-VL family: config from ``recipe``, seeded weights, processor, and the family's
    chat template (``recipe["chat_template"]``, else Qwen2.5-VL's)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    chat_template = recipe.get("chat_template", CHAT_TEMPLATE)
    tokenizer = _build_tokenizer()
    tokenizer.chat_template = chat_template
    config = config_cls(text_config=dict(recipe["text_config"]), vision_config=dict(recipe["vision_config"]),
                        **_TOKEN_IDS)
    config.architectures = [model_cls.__name__]
    model = _seeded_model(model_cls, config, _first_filler(tokenizer))
    image_processor = (Qwen2VLImageProcessor(**recipe["image_processor"]) if "image_processor" in recipe
                       else _image_processor(Qwen2VLImageProcessor))
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              video_processor=(video_processor_cls or Qwen2VLVideoProcessor)(),
                              chat_template=chat_template)
    _save_common(out, model, processor)


def _build_qwen2_5_vl(out: Path, recipe: dict[str, Any]) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    _build(out, recipe, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)


def _build_qwen3_vl(out: Path, recipe: dict[str, Any]) -> None:
    from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)

    _build(out, recipe, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor)


# The key layout of the published GME checkpoints (Alibaba-NLP/gme-Qwen2-VL-{2B,7B}-Instruct): they
# were saved by transformers < 4.52's Qwen2VLForConditionalGeneration, whose modules are ``visual``
# (tower + merger), ``model`` (the text decoder) and ``lm_head``; the repos' own gme_inference.py
# reads them as ``self.base.visual`` and ``self.base.model.embed_tokens`` (read in the copy at
# TIGER-AI-Lab/VLM2Vec src/model/vlm_backbone/gme/gme_inference.py). vLLM 0.32's qwen2_vl.py maps
# the same prefixes ("mapping for original checkpoint"), and transformers 5 renames them on load
# (conversion_mapping.py, Qwen2VLForConditionalGeneration: ^visual -> model.visual, ^model ->
# model.language_model). The tiny embedder is written in this layout, so it loads by GME's path.
GME_LAYOUT = {"visual.": "model.visual.", "model.": "model.language_model.", "lm_head.": "lm_head."}


def gme_layout(keys: list[str]) -> dict[str, str]:
    """``{transformers 5 key: GME key}`` for a Qwen2-VL state dict saved in either layout."""
    renamed = {}
    for key in keys:
        for ours, theirs in GME_LAYOUT.items():
            if key.startswith(theirs):
                renamed[key] = ours + key[len(theirs):]
                break
        else:
            renamed[key] = key
    return renamed


def _to_gme_layout(out: Path) -> None:
    """Rewrite ``out/model.safetensors`` in GME's key layout (a no-op when transformers saved it so)."""
    from safetensors.torch import load_file, save_file

    path = out / "model.safetensors"
    weights = load_file(path)
    renamed = gme_layout(list(weights))
    if any(k != v for k, v in renamed.items()):
        save_file({renamed[k]: v for k, v in weights.items()}, path, metadata={"format": "pt"})
    unknown = sorted(k for k in renamed.values() if not k.startswith(tuple(GME_LAYOUT)))
    if unknown:
        raise RuntimeError(f"tiny embedder: keys outside GME's layout: {unknown[:5]}")


def _build_qwen2_vl(out: Path, recipe: dict[str, Any]) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    _build(out, recipe, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor)
    _to_gme_layout(out)


def main(argv: list[str]) -> None:
    """``python -m patentqa.tiny out_dir=DIR``: build the tiny models, print their paths."""
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    out_dir = Path(opts.get("out_dir", ".cache/tiny"))
    print(tiny_qwen2_5_vl(out_dir))
    print(tiny_qwen3_vl(out_dir))
    print(tiny_qwen2_vl_embedder(out_dir))


if __name__ == "__main__":
    main(sys.argv[1:])
