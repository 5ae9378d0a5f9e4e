"""Tiny random Qwen2.5-VL / Qwen3-VL / Qwen3.5 / Qwen2-VL checkpoints for tests, built offline in seconds.

Nothing is downloaded: a byte-level BPE tokenizer is trained on a small embedded Chinese
patent corpus plus the synthetic patents' word lists (so their answers are a few tokens,
not runs of bytes), padded up to id 151642, and Qwen's special tokens are added at their
real ids (151643-151664). The filler ids no text encodes to get zero embedding and output
rows, so an untrained model spreads its guesses over real tokens, not 150k fillers. ms-swift hard-codes those ids (``<|image_pad|>`` = 151655); a tiny
model with other ids trains, but never expands image tokens. Qwen3.5 has its own vocabulary: the same BPE padded
to id 248043, its 33 added tokens at their real ids (248044-248076; ``<|image_pad|>`` = 248056), 248320 embedding rows.

    tiny_qwen2_5_vl(cache_dir)        -> cache_dir/qwen2_5_vl      (answerer, 28 px a visual token)
    tiny_qwen3_vl(cache_dir)          -> cache_dir/qwen3_vl        (answerer, 32 px a visual token)
    tiny_qwen3_5(cache_dir)           -> cache_dir/qwen3_5         (answerer: hybrid Gated DeltaNet, thinking template)
    tiny_qwen3_8(cache_dir)           -> cache_dir/qwen3_8         (the same weights, Qwen3.8's chat template)
    tiny_qwen2_vl(cache_dir)          -> cache_dir/qwen2_vl        (answerer, 28 px a visual token, GME's tower)
    tiny_minicpm_v_4_6(cache_dir)     -> cache_dir/minicpm_v_4_6   (answerer: slices, hybrid Qwen3.5 text)
    tiny_qwen2_vl_embedder(cache_dir) -> cache_dir/qwen2_vl_gme    (GME-shaped embedder)
    tiny_answerer(model_type, cache_dir): the answerer of a swift model type (``model.build_tiny``)

Each directory holds config, safetensors weights, tokenizer, processor, chat template,
``generation_config.json`` and a ``tiny.json`` marker with the recipe digest; a changed
recipe rebuilds. Builds go to a temp dir next to the target and are moved into place with
``os.replace``, so a killed build never leaves a half model.

Each family keeps its own chat template (a recipe's ``chat_template``, else Qwen2.5-VL's): Qwen3-VL's
has no default system prompt; Qwen3.5's is the released thinking template (``enable_thinking``).

Modules: ``tokenizer`` (the BPE, Qwen's added tokens, the chat templates), ``build`` (recipe digest,
atomic cached build, seeded weights), one a family: ``qwen2_5_vl``, ``qwen2_vl``, ``qwen3_vl``, ``qwen3_5``, ``minicpm_v``, ``gme`` (Qwen2-VL
embedder).

CLI: ``python -m patentqa.tiny out_dir=DIR`` builds all seven and prints the paths.

This package imports only the leaf word list ``patentqa.data.synth.vocab`` so every stage may use it.
"""
from __future__ import annotations

from pathlib import Path

# the names stages and tests use, re-exported from the modules that own them
from patentqa.tiny.build import OUTPUT_ROW_STD, RECIPE_VERSION, SEED, VOCAB_SIZE, recipe_digest
from patentqa.tiny.minicpm_v import MINICPM_V_4_6_RECIPE, tiny_minicpm_v_4_6
from patentqa.tiny.gme import GME_LAYOUT, QWEN2_VL_GME_RECIPE, gme_layout, tiny_qwen2_vl_embedder
from patentqa.tiny.qwen2_5_vl import QWEN2_5_VL_RECIPE, tiny_qwen2_5_vl
from patentqa.tiny.qwen2_vl import QWEN2_VL_RECIPE, tiny_qwen2_vl
from patentqa.tiny.qwen3_5 import QWEN3_5_RECIPE, QWEN3_8_RECIPE, tiny_qwen3_5, tiny_qwen3_8
from patentqa.tiny.qwen3_vl import QWEN3_VL_RECIPE, tiny_qwen3_vl
from patentqa.tiny.tokenizer import (BPE_VOCAB_SIZE, CHAT_TEMPLATE, CORPUS, EXTRA_TOKENS, FIRST_SPECIAL_ID,
                                     QWEN3_5_ADDED_TOKENS, QWEN3_5_CHAT_TEMPLATE, QWEN3_5_FIRST_ADDED_ID,
                                     QWEN3_5_TOKENIZER_LEN, QWEN3_VL_CHAT_TEMPLATE, SPECIAL_TOKENS, TOKENIZER_LEN,
                                     _first_filler, tokenizer_corpus)


def tiny_answerer(model_type: str, cache_dir: str | Path) -> Path:
    """The tiny answerer for a swift ``model_type`` (its family's ``build_tiny``), built into ``cache_dir`` if
    missing."""
    from patentqa.models import FAMILIES  # the families name their builders; imported late, they import stages

    if model_type not in FAMILIES or not FAMILIES[model_type].tiny:
        raise ValueError(f"no tiny model for model_type {model_type!r}; there is one for "
                         f"{', '.join(n for n, f in FAMILIES.items() if f.tiny)}")
    return FAMILIES[model_type].build_tiny(cache_dir)


def main(argv: list[str]) -> None:
    """``python -m patentqa.tiny out_dir=DIR``: build the tiny models, print their paths."""
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    out_dir = Path(opts.get("out_dir", ".cache/tiny"))
    print(tiny_qwen2_5_vl(out_dir))
    print(tiny_qwen3_vl(out_dir))
    print(tiny_qwen3_5(out_dir))
    print(tiny_qwen3_8(out_dir))
    print(tiny_qwen2_vl(out_dir))
    print(tiny_minicpm_v_4_6(out_dir))
    print(tiny_qwen2_vl_embedder(out_dir))
