"""The one prompt builder: the only code that writes prompt text.

``build_prompt`` returns a structured ``Prompt`` (ordered text and image parts, each image
with its pixel budget). Renderers turn that one structure into an ms-swift SFT row,
transformers chat messages, a vLLM request or OpenAI content parts, so training and every
inference engine see the same words, images and budgets.

Prompt forms (which one a question gets is routing's decision, see ``prompt_form``):
- ``with_context``: page question; asked page + retrieved pages;
- ``figure_only``: page question answerable from the figure alone; asked page, bigger budget;
- ``document``: whole-patent question; retrieved pages.
Variants (config group ``prompt``): ``seed_b`` (the seed's round-B templates verbatim),
``page_labels`` (each image labelled 第N页：, the asked page named in the text),
``minimal`` (pages + bare question: the "minimal prompt" ablation), and two that use the OCR
layer (``patentqa.data.ocr.layout``) with seed_b's words: ``figure_crop`` (the asked figure cropped
from its page, at the form's pixel budget, in place of the whole page) and ``ocr_text`` (each
shown page's OCR text, within ``ocr_max_chars``, ``beside`` its image or ``instead`` of the
images of the context pages).
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

from patentqa.data.questions import parse_question

FORMS: tuple[str, ...] = ("with_context", "figure_only", "document")
IMAGE_TAG = "<image>"

_INTRO = "你是一个专利内容分析专家，请根据我提供的专利内容回答我的问题。\n"
_ASK = "请你在分析专利内容后，回答我的问题：\n【我的问题】【{question}】\n"
_THINK = "请仔细思考，在思考结束后，请直接给出你的答案："
CHOICE_STYLES = ("seed_a", "letter")
# round A in the seed's words (its write-up: 4-way choice, "直接给出答案"), and ours, which asks for the
# fixed "答案：X" line that parse_choice reads first
_OPTIONS_SEED_A = "【选项】\n{options}\n请仔细思考，在思考结束后，请直接给出正确选项的字母："
_OPTIONS_LETTER = "可选答案：\n{options}\n只回答一个选项字母（{letters}），格式为“答案：字母”。"
_THINK_POSITION = ("请仔细思考，你需要特别注意，图中部件的上下、前后、左右位置判断应以标号线所指代的实际结构为准，"
                   "而不是仅凭直观看数字。在思考结束后，请直接给出你的答案：")


@dataclass(frozen=True)
class PageImage:
    """A rendered page (or the crop of its figure): its 1-based number, image file and OCR text."""

    page: int
    path: str
    text: str | None = None


@dataclass(frozen=True)
class ImagePart:
    """One image in a prompt, with the pixel budget it is shown at."""

    path: str
    page: int
    max_pixels: int
    min_pixels: int


Part = Union[str, ImagePart]


@dataclass(frozen=True)
class Prompt:
    """Ordered text and image parts; adjacent strings are merged by the builder."""

    parts: tuple[Part, ...]
    form: str = "text"

    @property
    def images(self) -> list[ImagePart]:
        return [part for part in self.parts if isinstance(part, ImagePart)]

    def text(self, image_tag: str = IMAGE_TAG) -> str:
        """The prompt text with ``image_tag`` where each image goes."""
        return "".join(part if isinstance(part, str) else image_tag for part in self.parts)

    def pixel_budget(self) -> tuple[int, int] | None:
        """(max_pixels, min_pixels) shared by every image, or None for a text-only prompt."""
        budgets = {(image.max_pixels, image.min_pixels) for image in self.images}
        if len(budgets) > 1:
            raise ValueError(f"images of one prompt have different budgets: {sorted(budgets)}")
        return budgets.pop() if budgets else None


def pixels(tokens: int, factor: int) -> int:
    """The pixel area of ``tokens`` visual tokens: one token is a ``factor`` × ``factor`` square
    (28 for Qwen2.5-VL: patch 14 × merge 2; 32 for Qwen3-VL: patch 16 × merge 2)."""
    return int(tokens) * int(factor) ** 2


@dataclass(frozen=True)
class PromptConfig:
    """The ``prompt`` config group, its image budgets resolved to pixels for one model family.

    The config states budgets in visual tokens (``image_tokens`` per form, ``min_image_tokens``);
    ``from_cfg`` turns them into pixels with the model's ``image_factor``, so one token budget means
    the same number of image tokens on every family (and, for Qwen2.5-VL, the pixels it always did)."""

    name: str
    max_pixels: dict[str, int]     # per form, at the model's factor (from image_tokens)
    min_pixels: int = 3136         # from min_image_tokens (4 tokens at 28 px)
    figure_crop: bool = False      # the asked page's figure, cropped, in place of the page
    ocr_text: str | None = None    # "beside" | "instead": the shown pages' OCR text in the prompt
    ocr_max_chars: int = 1200      # OCR characters per prompt (Qwen: ~0.7-1 token per Chinese character)
    choice_style: str = "seed_a"   # round A: "seed_a" (the seed's words) | "letter" (ours: options, then "答案：")
    target: str = "answer"         # SFT response: "answer" | "cot" (a reasoning chain, then "答案：…")

    @classmethod
    def from_cfg(cls, cfg: Any, factor: int) -> PromptConfig:
        """The ``prompt`` group for a model whose visual tokens are ``factor`` pixels square."""
        get = cfg.get if hasattr(cfg, "get") else (lambda key, default=None: getattr(cfg, key, default))
        mode = get("ocr_text", None)
        if mode not in (None, "beside", "instead"):
            raise ValueError(f"prompt.ocr_text must be beside, instead or null, not {mode!r}")
        style = str(get("choice_style", "seed_a"))
        if style not in CHOICE_STYLES:
            raise ValueError(f"prompt.choice_style must be one of {', '.join(CHOICE_STYLES)}, not {style!r}")
        target = str(get("target", "answer"))
        if target not in ("answer", "cot"):
            raise ValueError(f"prompt.target must be answer or cot, not {target!r}")
        budgets = {str(form): pixels(tokens, factor) for form, tokens in dict(cfg.image_tokens).items()}
        return cls(name=str(cfg.name), max_pixels=budgets, min_pixels=pixels(cfg.min_image_tokens, factor),
                   figure_crop=bool(get("figure_crop", False)), ocr_text=mode,
                   ocr_max_chars=int(get("ocr_max_chars", 1200)), choice_style=style, target=target)

    @property
    def uses_layout(self) -> bool:
        """Whether prompts need the OCR layer (figure crops or page text)."""
        return self.figure_crop or self.ocr_text is not None

    def budget(self, form: str) -> int:
        return self.max_pixels["figure_only" if form == "figure_only" else "with_context"]


def prompt_form(question: str, figure_only: bool | None = None) -> str:
    """Default routing: whole-patent questions → document; position questions → figure only.

    ``figure_only`` overrides the rule for page questions (e.g. the seed's LLM classifier).
    """
    parsed = parse_question(question)
    if parsed.page is None:
        return "document"
    if figure_only is None:
        figure_only = parsed.kind == "figure_position"
    return "figure_only" if figure_only else "with_context"


def options_text(config: PromptConfig, options: Sequence[str]) -> str:
    """The round-A block that replaces the closing instruction: the options and how to answer."""
    letters = "、".join(o.strip()[0] for o in options)
    template = _OPTIONS_LETTER if config.choice_style == "letter" else _OPTIONS_SEED_A
    return template.format(options="\n".join(o.strip() for o in options), letters=letters)


def build_prompt(config: PromptConfig, question: str, form: str, asked: PageImage | None,
                 context: list[PageImage], options: Sequence[str] | None = None) -> Prompt:
    """The prompt for one question in one form; ``context`` pages come sorted by the retriever;
    ``options``: a round-A question's choices ("A. …"), shown in ``config.choice_style``."""
    if form not in FORMS:
        raise ValueError(f"unknown prompt form {form!r}; expected one of {FORMS}")
    if form != "document" and asked is None:
        raise ValueError(f"form {form!r} needs the asked page")
    budget = config.budget(form)

    def image(page: PageImage) -> list[Part]:
        part = ImagePart(page.path, page.page, budget, config.min_pixels)
        return [f"第{page.page}页：", part] if config.name == "page_labels" else [part]

    if config.name == "minimal":  # ablation: the pages and the bare question, no instructions
        pages = ([asked] if asked else []) + (context if form != "figure_only" else [])
        tail = [question] + (["\n" + options_text(config, options)] if options else [])
        return Prompt(parts=_merge([p for page in pages for p in image(page)] + tail), form=form)
    labelled = config.name == "page_labels"
    where = f"第{asked.page}页" if labelled and asked else "这页"
    shown = ([] if asked is None else [asked]) + (context if form != "figure_only" else [])
    pictured = [page for page in context if config.ocr_text != "instead"]  # "instead": context as text only
    parts: list[Part] = [_INTRO]
    if form == "document":
        if pictured:
            parts += ["专利内容为：\n", *[p for page in pictured for p in image(page)], "\n\n"]
    else:
        parts += [f"该问题针对于{where}专利内容里面的图进行提问：\n", *image(asked), "\n\n"]  # type: ignore[arg-type]
        if form == "with_context" and pictured:  # no retrieved pages (retrieval=none): asked page only
            parts += ["其他的相关专利内容为：\n", *[p for page in pictured for p in image(page)], "\n\n"]
    if config.ocr_text:
        parts.append(ocr_block(shown, config.ocr_max_chars))
    parts.append(_ASK.format(question=question))
    if options:
        parts.append(options_text(config, options))
        return Prompt(parts=_merge(parts), form=form)
    hint = form == "figure_only" and "位置" in question
    parts.append(_THINK_POSITION if hint else _THINK)
    return Prompt(parts=_merge(parts), form=form)


def ocr_block(pages: list[PageImage], max_chars: int) -> str:
    """The OCR text of ``pages`` (in the order shown), cut to ``max_chars`` characters of text."""
    out, left = [], max_chars
    for page in pages:
        if not page.text or left <= 0:
            continue
        text = page.text[:left]
        left -= len(text)
        out.append(f"第{page.page}页的文字（OCR）：\n{text}\n")
    return ("页面文字识别结果：\n" + "".join(out) + "\n") if out else ""


def _merge(parts: list[Part]) -> tuple[Part, ...]:
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        elif part != "":
            merged.append(part)
    return tuple(merged)


def prompt_to_json(prompt: Prompt) -> dict[str, Any]:
    """A JSON-safe form of a prompt, stored in evaluation sets."""
    parts = [part if isinstance(part, str) else {"image": part.path, "page": part.page, "max_pixels": part.max_pixels,
                                                   "min_pixels": part.min_pixels} for part in prompt.parts]
    return {"form": prompt.form, "parts": parts}


def prompt_from_json(data: dict[str, Any]) -> Prompt:
    """Inverse of ``prompt_to_json``."""
    parts = tuple(part if isinstance(part, str) else ImagePart(part["image"], part["page"], part["max_pixels"],
                                                              part["min_pixels"]) for part in data["parts"])
    return Prompt(parts=parts, form=data["form"])


# --- the seed's two text-only helper calls -------------------------------------------------

CLASSIFIER_PROMPT = (
    '你是一个内容分类专家，请判断用户的这个问题能否直接通过看图回答，还是需要参考其他的相关信息来回答。\n'
    '    判断规则：已知图是结构图，里面只有部件序号，没有部件名称。如果用户的问题是要通过看图判断某些部件的位置关系，'
    '这类问题可以直接通过看图回答；如果用户问题涉及到询问部件是什么、部件名称功能和原理等，这些问题需要参考其他的相关信息来回答。\n'
    '    对于只需要看图回答的问题，请回答字母"Y"；对于需要参考其他的相关信息来回答的问题，请回答字母"N"。\n'
    '    \n    给你提供一些示例\n'
    '    示例1： 在文件中第5页提供的图片中，编号为4的部件是什么？\n    解析：询问部件名称，图里面是没有的\n    回答：N\n\n'
    '    示例2:基于文件中第6页的图片，部件4位于哪个部件的延伸方向上？\n    解析：询问部件位置关系，图里面是可以看出来的\n    回答：Y\n\n'
    '    示例3:根据文件中第7页的图片，部件41位于部件3的什么位置？\n    解析：询问部件位置关系，图里面是可以看出来的\n    回答：Y\n\n'
    '    你要判断的用户问题是：\n    '
)

STYLE_PROMPT = (
    '你是一个内容提取专家，请从文本中判断，这段描述想表达的准确答案是什么。请仔细思考，在思考结束后，输出简要的答案（通常20个字词以内）。'
    '\n    为了便于你回答，我给你提供几个示例：\n    示例1\n'
    '    文本内容为："根据专利内容和图2的描述：\\n\\n- 编号为15的部件是**滤网**。\\n- 编号为12的部件是**连接法兰**。\\n\\n'
    '从图2中可以看出，滤网（15）位于连接法兰（12）的**下方**。\\n\\n因此，正确答案是在12的下方"\n'
    '    输出的答案为：在12的下方\n\n    示例2\n'
    '    文本内容为："根据专利内容，调节可移动折弯模架的位置是通过丝杆机构（部件7）实现的。丝杆机构包括丝杆（71）和丝杆滑块（72），'
    '通过调节手轮（74）转动丝杆，从而带动丝杆滑块移动，进而控制导轨滑块（6）沿导轨（5）移动，最终实现可移动折弯模架（1）的位置调节。'
    '因此，首先需要操作的部件是丝杆机构（部件7）。"\n    输出的答案为：部件7\n\n    示例3\n'
    '    文本内容为："该专利提供了一种用于滚筒输送机的货物靠边规整处理机构，通过倾斜设置的转辊和联动皮带，实现货物自动靠边规整，减少损伤，提高输送效率。"\n'
    '    输出的答案为：实现货物自动靠边规整\n\n    示例4:\n    文本内容为："定位杆"\n    输出的答案为： 定位杆\n\n'
    '    示例5:\n    文本内容为："部件22位于部件23的左侧"\n    输出的答案为： 部件22位于部件23的左侧\n    '
)


CHAIN_REQUEST = "\n请先简要写出推理过程（涉及哪些部件、它们在图中的位置或说明书中的依据），最后单独一行写出“答案：”和答案。"


def with_chain_request(prompt: Prompt) -> Prompt:
    """A question prompt that also asks for the reasoning and a final "答案：" line (chain generation)."""
    return Prompt(parts=_merge([*prompt.parts, CHAIN_REQUEST]), form=prompt.form)


def classifier_prompt(question: str) -> Prompt:
    """The seed's Y/N classifier: can the figure alone answer this page question?"""
    return Prompt(parts=(CLASSIFIER_PROMPT + question + "\n请直接回答分类结果，不要解释，你的答案为：",))


def parse_classifier_answer(text: str) -> bool:
    """True (figure only) when the classifier's output contains Y or y, as in the seed."""
    return "Y" in text or "y" in text


def style_prompt(raw_answer: str, style_answers: list[str]) -> Prompt:
    """The seed's style pass: shorten a raw answer, shown answers of similar training questions."""
    examples = "回答风格示例: " + "".join(answer + "\n" for answer in style_answers) + "\n\n"
    text = (STYLE_PROMPT + "同时为了便于你回答，我再给你提供一些答案的风格示例：\n" + examples + "\n"
            + "你要判断的文本内容为：\n" + raw_answer
            + "请直接回答文本想要表达的准确答案（风格和前面的示例类似，通常20个字词以内，并且不要改变原始回答的意思），不要解释，你输出的答案为：")
    return Prompt(parts=(text,))


# --- renderers -----------------------------------------------------------------------------

def to_swift_row(prompt: Prompt, answer: str) -> dict[str, Any]:
    """An ms-swift SFT row: ``<image>`` tags in order, images, the row's pixel budget."""
    row: dict[str, Any] = {"messages": [{"role": "user", "content": prompt.text(IMAGE_TAG)},
                                        {"role": "assistant", "content": answer}],
                           "images": [image.path for image in prompt.images]}
    budget = prompt.pixel_budget()
    if budget:
        row["chat_template_kwargs"] = {"max_pixels": budget[0], "min_pixels": budget[1]}
    return row


def to_chat_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """transformers / qwen-vl-utils chat messages (images carry their budgets)."""
    content: list[dict[str, Any]] = []
    for part in prompt.parts:
        if isinstance(part, str):
            content.append({"type": "text", "text": part})
        else:
            content.append({"type": "image", "image": part.path,
                            "max_pixels": part.max_pixels, "min_pixels": part.min_pixels})
    return [{"role": "user", "content": content}]


def load_images(prompt: Prompt, factor: int = 28, resize: bool = True) -> list[Any]:
    """The PIL images of a prompt, resized to their budgets exactly as qwen-vl-utils does; ``resize=False``: as
    ms-swift hands them to a slicing family's processor (MiniCPM-V, whose processor resizes into its slices
    itself): the file in RGB, scaled down in proportion when it holds more than its ``max_pixels``
    (``swift.template.vision_utils.rescale_image``: torchvision's ``Resize`` to the truncated height and width).
    Pages rendered at their budget hold no more, so they go as they are."""
    if not resize:
        from PIL import Image
        from torchvision.transforms import Resize

        images = []
        for part in prompt.images:
            with Image.open(part.path) as file:
                image = file.convert("RGB") if file.mode != "RGB" else file.copy()
            if part.max_pixels and image.width * image.height > part.max_pixels:
                ratio = image.width / image.height
                height = math.sqrt(part.max_pixels / ratio)
                image = Resize((int(height), int(height * ratio)))(image)
            images.append(image)
        return images
    from qwen_vl_utils import fetch_image

    return [fetch_image({"image": part.path, "max_pixels": part.max_pixels, "min_pixels": part.min_pixels},
                        image_patch_size=factor // 2) for part in prompt.images]


def to_vllm_request(prompt: Prompt, processor: Any, factor: int = 28,
                    template_kwargs: Mapping[str, Any] | None = None, resize: bool = True) -> dict[str, Any]:
    """A vLLM request: the chat-templated prompt string (``template_kwargs``: the model's, e.g. enable_thinking)
    and its (already budgeted) images (``load_images``)."""
    text = processor.apply_chat_template(to_chat_messages(prompt), tokenize=False, add_generation_prompt=True,
                                         **(template_kwargs or {}))
    request: dict[str, Any] = {"prompt": text}
    if prompt.images:
        request["multi_modal_data"] = {"image": load_images(prompt, factor, resize)}
    return request


def to_openai_content(prompt: Prompt, factor: int = 28, resize: bool = True) -> list[dict[str, Any]]:
    """OpenAI chat content parts; images as base64 PNG data URLs at their budget (``load_images``).

    PNG is lossless: the server decodes exactly the pixels the offline engines pass (a JPEG
    re-encode would change them and, with them, greedy answers)."""
    images = iter(load_images(prompt, factor, resize))
    content: list[dict[str, Any]] = []
    for part in prompt.parts:
        if isinstance(part, str):
            content.append({"type": "text", "text": part})
        else:
            buffer = io.BytesIO()
            next(images).convert("RGB").save(buffer, format="PNG", compress_level=1)
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
    return content
