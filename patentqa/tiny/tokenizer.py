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


# ---- Qwen3.5 (hybrid Gated DeltaNet + attention; its own vocabulary of 248,044 BPE tokens) ----

# Qwen3.5's added tokens, in id order from 248044, with their ``special`` flag (the released checkpoints'
# added_tokens_decoder, as quoted in public code: 33 tokens, 248044-248076; 248058-248069 are ordinary added
# tokens, the rest special). ms-swift's ``Qwen3_5Template`` hard-codes <|image_pad|> 248056 / <|video_pad|> 248057.
QWEN3_5_FIRST_ADDED_ID = 248044
QWEN3_5_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),  # 248044
    ("<|im_start|>", True),  # 248045
    ("<|im_end|>", True),  # 248046
    ("<|object_ref_start|>", True),  # 248047
    ("<|object_ref_end|>", True),  # 248048
    ("<|box_start|>", True),  # 248049
    ("<|box_end|>", True),  # 248050
    ("<|quad_start|>", True),  # 248051
    ("<|quad_end|>", True),  # 248052
    ("<|vision_start|>", True),  # 248053
    ("<|vision_end|>", True),  # 248054
    ("<|vision_pad|>", True),  # 248055
    ("<|image_pad|>", True),  # 248056
    ("<|video_pad|>", True),  # 248057
    ("<tool_call>", False),  # 248058
    ("</tool_call>", False),  # 248059
    ("<|fim_prefix|>", False),  # 248060
    ("<|fim_middle|>", False),  # 248061
    ("<|fim_suffix|>", False),  # 248062
    ("<|fim_pad|>", False),  # 248063
    ("<|repo_name|>", False),  # 248064
    ("<|file_sep|>", False),  # 248065
    ("<tool_response>", False),  # 248066
    ("</tool_response>", False),  # 248067
    ("<think>", False),  # 248068
    ("</think>", False),  # 248069
    ("<|audio_start|>", True),  # 248070
    ("<|audio_end|>", True),  # 248071
    ("<tts_pad>", True),  # 248072
    ("<tts_text_bos>", True),  # 248073
    ("<tts_text_eod>", True),  # 248074
    ("<tts_text_bos_single>", True),  # 248075
    ("<|audio_pad|>", True),  # 248076
)
QWEN3_5_TOKENIZER_LEN = QWEN3_5_FIRST_ADDED_ID + len(QWEN3_5_ADDED_TOKENS)  # 248077, as Qwen3.5
# transformers' Qwen3_5Tokenizer pre-tokenizer: Qwen2's, with combining marks (\p{M}) kept inside words
QWEN3_5_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The chat template of the released Qwen3.5 checkpoints (chat_template.jinja, byte for byte: sha256 a4aee8af...,
# as in Qwen/Qwen3.5-27B and Qwen3.5-35B-A3B). A thinking template: the generation prompt opens ``<think>\n``, or
# with ``enable_thinking=False`` an empty block ``<think>\n\n</think>\n\n``; no default system prompt; every
# turn's content is trimmed; an assistant turn after the last user query carries its reasoning in <think>.
QWEN3_5_CHAT_TEMPLATE = r"""{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count, is_system_content=false) %}
    {%- if content is string %}
        {{- content }}
    {%- elif content is iterable and content is not mapping %}
        {%- for item in content %}
            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}
                {%- if is_system_content %}
                    {{- raise_exception('System message cannot contain images.') }}
                {%- endif %}
                {%- if do_vision_count %}
                    {%- set image_count.value = image_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}
                    {{- 'Picture ' ~ image_count.value ~ ': ' }}
                {%- endif %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif 'video' in item or item.type == 'video' %}
                {%- if is_system_content %}
                    {{- raise_exception('System message cannot contain videos.') }}
                {%- endif %}
                {%- if do_vision_count %}
                    {%- set video_count.value = video_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}
                    {{- 'Video ' ~ video_count.value ~ ': ' }}
                {%- endif %}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- else %}
                {{- raise_exception('Unexpected item type in content.') }}
            {%- endif %}
        {%- endfor %}
    {%- elif content is none or content is undefined %}
        {{- '' }}
    {%- else %}
        {{- raise_exception('Unexpected content type.') }}
    {%- endif %}
{%- endmacro %}
{%- if not messages %}
    {{- raise_exception('No messages provided.') }}
{%- endif %}
{%- if tools and tools is iterable and tools is not mapping %}
    {{- '<|im_start|>system\n' }}
    {{- "# Tools\n\nYou have access to the following functions:\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>" }}
    {{- '\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n- You may provide optional reasoning for your function call in natural language BEFORE the function call, but NOT after\n- If there is no function call available, answer the question like normal with your current knowledge and do not tell the user about function calls\n</IMPORTANT>' }}
    {%- if messages[0].role == 'system' %}
        {%- set content = render_content(messages[0].content, false, true)|trim %}
        {%- if content %}
            {{- '\n\n' + content }}
        {%- endif %}
    {%- endif %}
    {{- '<|im_end|>\n' }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {%- set content = render_content(messages[0].content, false, true)|trim %}
        {{- '<|im_start|>system\n' + content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" %}
        {%- set content = render_content(message.content, false)|trim %}
        {%- if not(content.startswith('<tool_response>') and content.endswith('</tool_response>')) %}
            {%- set ns.multi_step_tool = false %}
            {%- set ns.last_query_index = index %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if ns.multi_step_tool %}
    {{- raise_exception('No user query found in messages.') }}
{%- endif %}
{%- for message in messages %}
    {%- set content = render_content(message.content, true)|trim %}
    {%- if message.role == "system" %}
        {%- if not loop.first %}
            {{- raise_exception('System message must be at the beginning.') }}
        {%- endif %}
    {%- elif message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- set reasoning_content = reasoning_content|trim %}
        {%- if loop.index0 > ns.last_query_index %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content + '\n</think>\n\n' + content }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls and message.tool_calls is iterable and message.tool_calls is not mapping %}
            {%- for tool_call in message.tool_calls %}
                {%- if tool_call.function is defined %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {%- if loop.first %}
                    {%- if content|trim %}
                        {{- '\n\n<tool_call>\n<function=' + tool_call.name + '>\n' }}
                    {%- else %}
                        {{- '<tool_call>\n<function=' + tool_call.name + '>\n' }}
                    {%- endif %}
                {%- else %}
                    {{- '\n<tool_call>\n<function=' + tool_call.name + '>\n' }}
                {%- endif %}
                {%- if tool_call.arguments is defined %}
                    {%- for args_name, args_value in tool_call.arguments|items %}
                        {{- '<parameter=' + args_name + '>\n' }}
                        {%- set args_value = args_value | tojson | safe if args_value is mapping or (args_value is sequence and args_value is not string) else args_value | string %}
                        {{- args_value }}
                        {{- '\n</parameter>\n' }}
                    {%- endfor %}
                {%- endif %}
                {{- '</function>\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.previtem and loop.previtem.role != "tool" %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if not loop.last and loop.nextitem.role != "tool" %}
            {{- '<|im_end|>\n' }}
        {%- elif loop.last %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- else %}
        {{- raise_exception('Unexpected message role.') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- else %}
        {{- '<think>\n' }}
    {%- endif %}
{%- endif %}"""
QWEN3_5_CHAT_TEMPLATE_SHA256 = "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715"


def _qwen3_8_template(qwen3_5: str) -> str:
    """Qwen3.8-27B's chat template: Qwen3.5's with the reasoning-effort system line (xhigh by default, none
    with ``enable_thinking`` false or effort ``medium``), ``preserve_thinking`` (on unless a request turns it off:
    every assistant turn keeps its think block) and its tool-argument rendering. Written as these edits of
    Qwen3.5's, after a public copy of the released template quoted in code (a C++ raw string next to Qwen3.6's);
    not byte-checked against the checkpoint's own file."""
    edits = [
        ("{%- endif %}\n{%- if tools and tools is iterable and tools is not mapping %}\n    {{- '<|im_start|>system\\n' }}\n",
         "{%- endif %}\n{%- set reasoning_instructions = '' %}\n"
         "{%- if enable_thinking is undefined or enable_thinking is true %}\n"
         "    {%- set resolved_reasoning_effort = reasoning_effort|default('xhigh') %}\n"
         "    {%- if resolved_reasoning_effort not in ('xhigh', 'medium', 'low') %}\n"
         "        {{- raise_exception('Unexpected reasoning effort ' ~ reasoning_effort ~ '. Supported types are xhigh "
         "(default), medium, and low.') }}\n"
         "    {%- endif %}\n"
         "    {%- if resolved_reasoning_effort == 'xhigh' %}\n"
         "        {%- set reasoning_instructions = '" + QWEN3_8_XHIGH + "' %}\n"
         "    {%- elif resolved_reasoning_effort == 'low' %}\n"
         "        {%- set reasoning_instructions = '" + QWEN3_8_LOW + "' %}\n"
         "    {%- endif %}\n"
         "{%- endif %}\n"
         "{%- if tools and tools is iterable and tools is not mapping %}\n    {{- '<|im_start|>system\\n' }}\n"
         "    {%- if reasoning_instructions %}\n        {{- reasoning_instructions + '\\n\\n' }}\n    {%- endif %}\n"),
        ("        {{- '<|im_start|>system\\n' + content + '<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n",
         "        {%- if content %}\n"
         "            {{- '<|im_start|>system\\n' + (reasoning_instructions + '\\n\\n' if reasoning_instructions else '')  "
         "+ content + '<|im_end|>\\n' }}\n"
         "        {%- elif reasoning_instructions %}\n"
         "            {{- '<|im_start|>system\\n' + reasoning_instructions + '<|im_end|>\\n' }}\n"
         "        {%- endif %}\n"
         "    {%- elif reasoning_instructions %}\n"
         "        {{- '<|im_start|>system\\n' + reasoning_instructions + '<|im_end|>\\n' }}\n"
         "    {%- endif %}\n{%- endif %}\n"),
        ("            {%- set reasoning_content = message.reasoning_content %}\n        {%- else %}\n"
         "            {%- if '</think>' in content %}\n"
         "                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1]"
         ".lstrip('\\n') %}\n"
         "                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
         "            {%- endif %}\n        {%- endif %}\n",
         "            {%- set reasoning_content = message.reasoning_content %}\n        {%- endif %}\n"),
        ("        {%- if loop.index0 > ns.last_query_index %}\n",
         "        {%- if preserve_thinking is undefined or preserve_thinking is true or loop.index0 > "
         "ns.last_query_index %}\n"),
        ("                {%- if tool_call.arguments is defined %}\n",
         "                {%- if tool_call.arguments is defined and tool_call.arguments != '' %}\n"),
        ("{%- set args_value = args_value | tojson | safe if args_value is mapping or (args_value is sequence and "
         "args_value is not string) else args_value | string %}",
         "{%- set args_value = args_value | string if args_value is string else args_value | tojson | safe %}"),
    ]
    for old, new in edits:
        if qwen3_5.count(old) != 1:
            raise ValueError(f"Qwen3.5's template changed; this edit no longer applies: {old[:60]!r}")
        qwen3_5 = qwen3_5.replace(old, new)
    return qwen3_5


QWEN3_8_XHIGH = ("Reasoning effort is set to xhigh. Please think carefully through the task, validate key assumptions, "
                 "consider plausible alternatives, and prioritize correctness, consistency, and clarity in the final "
                 "answer.")
QWEN3_8_LOW = ("Reasoning effort is set to low. Keep your thinking brief and focused, moving directly to the conclusion "
               "without unnecessary elaboration.")
QWEN3_8_CHAT_TEMPLATE = _qwen3_8_template(QWEN3_5_CHAT_TEMPLATE)


def build_qwen3_5_tokenizer() -> Any:
    """Byte-level BPE trained on ``tokenizer_corpus()`` with Qwen3.5's pre-tokenizer, padded to id 248043,
    Qwen3.5's added tokens at their real ids after (``QWEN3_5_ADDED_TOKENS``), its chat template set."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN3_5_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB_SIZE, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    bpe.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    for filler in range(len(vocab), QWEN3_5_FIRST_ADDED_ID):  # unreachable by any merge: never encoded
        vocab[f"<filler_{filler}>"] = filler

    tokenizer = Qwen3_5Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None,
                                 eos_token="<|endoftext|>",  # added first, so it lands on 248044; switched below
                                 pad_token="<|endoftext|>", model_max_length=262144, errors="replace",
                                 split_special_tokens=False, clean_up_tokenization_spaces=False)
    for token, special in QWEN3_5_ADDED_TOKENS:  # one at a time: the special and ordinary ones interleave
        tokenizer.add_tokens([AddedToken(token, special=special, normalized=False)], special_tokens=special)
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t, special in QWEN3_5_ADDED_TOKENS[1:]
                                                                if special]})
    tokenizer.eos_token = "<|im_end|>"  # as in the released tokenizers
    tokenizer.chat_template = QWEN3_5_CHAT_TEMPLATE
    for i, (token, _) in enumerate(QWEN3_5_ADDED_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != QWEN3_5_FIRST_ADDED_ID + i:
            raise RuntimeError(f"tiny Qwen3.5 tokenizer: {token} got id {got}, expected {QWEN3_5_FIRST_ADDED_ID + i}")
    if len(tokenizer) != QWEN3_5_TOKENIZER_LEN:
        raise RuntimeError(f"tiny Qwen3.5 tokenizer has {len(tokenizer)} tokens, expected {QWEN3_5_TOKENIZER_LEN}")
    return tokenizer
