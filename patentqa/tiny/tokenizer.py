"""The tiny models' tokenizer and chat templates: Qwen's special tokens at their real ids, offline.

A byte-level BPE is trained on a small embedded Chinese patent corpus plus the synthetic patents' word
lists (so their answers are a few tokens, not runs of bytes), padded with filler entries up to id
151642, and Qwen's added tokens follow at their real ids (151643-151664). The tokens, corpus and
templates here shape the tiny models, so ``patentqa.tiny.build.recipe_digest`` hashes them.
"""
from __future__ import annotations

import json
from typing import Any

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


def build_tokenizer() -> Any:
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


def _first_filler(tokenizer: Any) -> int:
    """The first filler id: the trained BPE occupies the ids below it."""
    return min(i for tok, i in tokenizer.get_vocab().items() if tok.startswith("<filler_"))
