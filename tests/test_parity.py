"""Training and inference see the same prompt: swift's template vs ``encode_prompts``.

For one question of each form, built by ``build_prompt`` over real rendered pages, the
prompt ms-swift trains on (``swift sft``'s own path: ``SftArguments`` → processor →
``qwen2_5_vl`` template in train mode → ``load_dataset`` → ``template.encode``; everything
before the first labelled token) must equal what the transformers engine feeds the model:
same ids (system prompt, words, image tokens), same image grids, same pixels.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from patentqa.data.corpus import inspect_pdf
from patentqa.data.pages import RenderSpec, render_documents
from patentqa.data.prompts import PageImage, Prompt, PromptConfig, build_prompt, classifier_prompt, to_swift_row
from patentqa.infer.align import training_prompt_ids
from patentqa.infer.inputs import encode_prompts, prompt_text
from salted import scan_pdf

SMOKE = PromptConfig(name="seed_b", max_pixels={"with_context": 50176, "figure_only": 100352})
SMALLER = PromptConfig(name="seed_b", max_pixels={"with_context": 25088, "figure_only": 50176})
QWEN_SYSTEM = "You are a helpful assistant."  # the released Qwen2.5-VL chat template's default
IMAGE_PAD = 151655
ANSWER = "滤网"

# (form, question, asked page, context pages)
QUESTIONS = [
    ("with_context", "在文件中第2页的示意图中，编号为3的部件是什么？", 2, [1, 3]),
    ("figure_only", "在文件中第3页的示意图中，部件4位于部件2的什么位置？", 3, []),
    ("document", "该专利要解决的技术问题是什么？", None, [1, 4]),
]
FORMS = [q[0] for q in QUESTIONS]

SwiftEncode = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[int, str]]:
    """Four A4 scan pages rendered at each smoke budget: {max_pixels: {page: path}}."""
    root = tmp_path_factory.mktemp("parity_pages")
    scan_pdf(root / "doc.pdf", pages=4)
    document = inspect_pdf(root / "doc.pdf")
    assert not isinstance(document, str), document
    out: dict[int, dict[int, str]] = {}
    for budget in sorted(set(SMOKE.max_pixels.values())):
        result = render_documents([document], root / "cache", RenderSpec(max_pixels=budget), workers=1, progress=False)
        assert not result.problems, result.problems
        out[budget] = {page: str(path) for (_, page), path in result.paths.items()}
    return out


def make_prompt(config: PromptConfig, form: str, pages: dict[int, dict[int, str]]) -> Prompt:
    """The test question of ``form``; pages read from the render at the smoke budget of the form."""
    _, question, asked, context = next(q for q in QUESTIONS if q[0] == form)
    files = pages[SMOKE.budget(form)]
    return build_prompt(config, question, form, PageImage(asked, files[asked]) if asked else None,
                        [PageImage(page, files[page]) for page in context])


@pytest.fixture(scope="module")
def processor(tiny_vl: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vl)


@pytest.fixture(scope="module")
def swift_train(tiny_vl: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, SwiftEncode]:
    """(template, encode_rows): rows encoded exactly as ``swift sft`` encodes its dataset rows."""
    from patentqa.infer.align import swift_encoder

    flags = {"model": str(tiny_vl), "model_type": "qwen2_5_vl", "template": "qwen2_5_vl"}
    encoder = swift_encoder(flags, tmp_path_factory.mktemp("parity_swift"))
    return encoder.template, encoder.encode


def single(processor: Any, prompt: Prompt) -> Any:
    return encode_prompts(processor, [prompt])


# --- swift's training template == the inference path ---------------------------------------

@pytest.mark.parametrize("form", FORMS)
def test_swift_training_prompt_equals_inference_prompt(form: str, pages, processor, swift_train) -> None:
    _, encode_rows = swift_train
    prompt = make_prompt(SMOKE, form, pages)
    row = to_swift_row(prompt, ANSWER)
    assert row["messages"][0]["content"].count("<image>") == len(row["images"]) == len(prompt.images)
    (trained,) = encode_rows([row])
    ours = single(processor, prompt)

    ids = training_prompt_ids(trained)
    assert ours["input_ids"][0].tolist() == ids, _diff(processor, ids, ours["input_ids"][0].tolist())
    assert processor.decode(trained["input_ids"][len(ids):]).startswith(ANSWER)  # the rest is the answer
    assert torch.equal(ours["image_grid_thw"], trained["image_grid_thw"])
    assert ours["pixel_values"].shape == trained["pixel_values"].shape
    assert torch.equal(ours["pixel_values"], trained["pixel_values"])  # same pixels, not only same grid
    assert ours["mm_token_type_ids"][0].tolist() == trained["mm_token_type_ids"][:len(ids)].tolist()

    # the grid is the budgeted image's, and the image tokens fill it
    grid = trained["image_grid_thw"]
    assert (grid[:, 1] * grid[:, 2] * 14 * 14 <= SMOKE.budget(form)).all()
    assert ids.count(IMAGE_PAD) == int(grid.prod(dim=1).sum()) // 4


def test_gray_png_pages_too(tmp_path: Path, processor, swift_train) -> None:
    """Black-and-white pages (colorspace gray, PNG): both sides convert to RGB the same way."""
    _, encode_rows = swift_train
    scan_pdf(tmp_path / "doc.pdf", pages=3, seed=1)
    document = inspect_pdf(tmp_path / "doc.pdf")
    spec = RenderSpec(max_pixels=SMOKE.budget("with_context"), colorspace="gray", format="png")
    files = render_documents([document], tmp_path / "cache", spec, workers=1, progress=False).paths
    prompt = build_prompt(SMOKE, QUESTIONS[0][1], "with_context", PageImage(2, str(files[("doc.pdf", 2)])),
                          [PageImage(p, str(files[("doc.pdf", p)])) for p in (1, 3)])
    (trained,) = encode_rows([to_swift_row(prompt, ANSWER)])
    ours = single(processor, prompt)
    assert ours["input_ids"][0].tolist() == training_prompt_ids(trained)
    assert torch.equal(ours["pixel_values"], trained["pixel_values"])


def test_cropped_figure_with_ocr_text_too(tmp_path: Path, processor, swift_train) -> None:
    """A figure_crop image (rendered from the PDF at the figure-only budget) beside ocr_text: same ids and pixels."""
    import dataclasses

    from PIL import Image

    from patentqa.data.ocr.layout import Layout
    from patentqa.data.ocr.reader import OcrResult

    _, encode_rows = swift_train
    scan_pdf(tmp_path / "doc.pdf", pages=3, seed=2)
    document = inspect_pdf(tmp_path / "doc.pdf")
    layout = Layout(OcrResult(), {document.name: document}, tmp_path / "crops", RenderSpec(max_pixels=1))
    crop = layout.crop(document, 2, [100.0, 150.0, 400.0, 500.0], SMOKE.budget("figure_only"), SMOKE.min_pixels)
    assert layout.crop(document, 2, [100.0, 150.0, 400.0, 500.0], SMOKE.budget("figure_only"), SMOKE.min_pixels) == crop
    with Image.open(crop) as image:
        width, height = image.size
    assert width % 28 == 0 and height % 28 == 0 and width * height <= SMOKE.budget("figure_only")
    assert abs(width / height - 312 / 362) < 0.1  # the figure's shape (6 pt margin), not the page's
    config = dataclasses.replace(SMOKE, name="ocr_text", figure_crop=True, ocr_text="beside")
    prompt = build_prompt(config, QUESTIONS[1][1], "figure_only", PageImage(3, str(crop), "图2 部件4 部件2"), [])
    assert "第3页的文字（OCR）：\n图2 部件4 部件2" in prompt.text()
    (trained,) = encode_rows([to_swift_row(prompt, ANSWER)])
    ours = single(processor, prompt)
    assert ours["input_ids"][0].tolist() == training_prompt_ids(trained)
    assert torch.equal(ours["image_grid_thw"], trained["image_grid_thw"])
    assert torch.equal(ours["pixel_values"], trained["pixel_values"])


def test_system_prompt_is_the_same(pages, processor, swift_train) -> None:
    """swift's qwen2_5_vl template inserts its default system; the chat template inserts its own."""
    template, encode_rows = swift_train
    prompt = make_prompt(SMOKE, "with_context", pages)
    assert template.template_meta.default_system == QWEN_SYSTEM
    system_block = f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n"
    assert prompt_text(processor, prompt).startswith(system_block)
    (trained,) = encode_rows([to_swift_row(prompt, ANSWER)])
    assert processor.decode(trained["input_ids"]).startswith(system_block)


def test_swift_honours_the_row_budget_and_a_different_budget_changes_the_grid(pages, processor,
                                                                             swift_train) -> None:
    """Per-row ``chat_template_kwargs`` max_pixels reaches swift's resize; parity holds at any budget."""
    _, encode_rows = swift_train
    for form in ("with_context", "figure_only"):
        smoke, smaller = make_prompt(SMOKE, form, pages), make_prompt(SMALLER, form, pages)
        assert [i.path for i in smoke.images] == [i.path for i in smaller.images]  # same files
        at_smoke, at_smaller = encode_rows([to_swift_row(smoke, ANSWER), to_swift_row(smaller, ANSWER)])
        assert not torch.equal(at_smoke["image_grid_thw"], at_smaller["image_grid_thw"]), form
        ours = single(processor, smaller)
        assert not torch.equal(ours["image_grid_thw"], single(processor, smoke)["image_grid_thw"])
        assert torch.equal(ours["image_grid_thw"], at_smaller["image_grid_thw"])
        assert torch.equal(ours["pixel_values"], at_smaller["pixel_values"])
        assert ours["input_ids"][0].tolist() == training_prompt_ids(at_smaller)


# --- batched encoding ------------------------------------------------------------------------

def test_left_padded_batch_equals_each_prompt_alone(pages, processor) -> None:
    prompts = [make_prompt(SMOKE, form, pages) for form in FORMS]
    batch = encode_prompts(processor, prompts)
    singles = [single(processor, p) for p in prompts]
    pad = processor.tokenizer.pad_token_id
    lengths = [s["input_ids"].shape[1] for s in singles]
    assert len(set(lengths)) > 1, "the test needs prompts of different lengths"
    assert batch["input_ids"].shape == (3, max(lengths))
    for row, alone, length in zip(range(3), singles, lengths):
        mask = batch["attention_mask"][row]
        n_pad = batch["input_ids"].shape[1] - length
        assert mask.tolist() == [0] * n_pad + [1] * length  # padding on the left
        assert set(batch["input_ids"][row, :n_pad].tolist()) <= {pad}
        assert batch["input_ids"][row][mask.bool()].tolist() == alone["input_ids"][0].tolist()
    assert torch.equal(batch["image_grid_thw"], torch.cat([s["image_grid_thw"] for s in singles]))
    assert torch.equal(batch["pixel_values"], torch.cat([s["pixel_values"] for s in singles]))
    assert processor.tokenizer.padding_side == "right", "encode_prompts must not change the processor"


def test_text_only_prompts_mix_with_image_prompts(pages, processor) -> None:
    prompts = [classifier_prompt("在文件中第3页的示意图中，部件4位于部件2的什么位置？"),
               make_prompt(SMOKE, "figure_only", pages)]
    batch = encode_prompts(processor, prompts)
    alone = single(processor, prompts[0])
    assert "pixel_values" not in alone
    assert batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist() == alone["input_ids"][0].tolist()
    assert batch["image_grid_thw"].shape == (1, 3)


def test_factor_must_match_the_processor(pages, processor) -> None:
    with pytest.raises(ValueError, match="patch_size"):
        encode_prompts(processor, [make_prompt(SMOKE, "figure_only", pages)], factor=32)


# --- MAX_PIXELS env vs the per-row budget (a fresh process: swift reads the env once) -------

_ENV_PROBE = r"""
import json, sys
from swift import SftArguments
from swift.dataset import load_dataset
model, rows, out = sys.argv[1:4]
args = SftArguments(model=model, model_type="qwen2_5_vl", template="qwen2_5_vl", check_model=False,
                    dataset=[rows], output_dir=out, add_version=False, report_to=["none"], load_from_cache_file=False)
template = args.get_template(args.get_model_processor(load_model=False)[1])
template.set_mode("train")
dataset, _ = load_dataset(args.dataset, **args.get_dataset_kwargs())
print("GRIDS=" + json.dumps([template.encode(r)["image_grid_thw"].tolist() for r in dataset]))
"""


@pytest.mark.e2e
def test_row_budget_wins_over_max_pixels_env(pages, tiny_vl: Path, tmp_path: Path) -> None:
    import swift  # noqa: F401  (`make setup` installs ms-swift)
    prompt = make_prompt(SMOKE, "figure_only", pages)  # budget 100352
    with_budget = to_swift_row(prompt, ANSWER)
    without = {k: v for k, v in with_budget.items() if k != "chat_template_kwargs"}
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (with_budget, without)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGE_MAX_TOKEN_NUM", "MIN_PIXELS", "IMAGE_MIN_TOKEN_NUM")}
    env.update(MAX_PIXELS=str(12544), HF_HUB_OFFLINE="1", MODELSCOPE_OFFLINE="1")  # 16 image tokens
    proc = subprocess.run([sys.executable, "-c", _ENV_PROBE, str(tiny_vl), str(rows), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("GRIDS="))
    (row_grid,), (env_grid,) = json.loads(line[len("GRIDS="):])
    assert row_grid[1] * row_grid[2] * 14 * 14 > 12544  # the row's 100352 budget, not the env's
    assert env_grid[1] * env_grid[2] * 14 * 14 <= 12544  # a row without a budget gets MAX_PIXELS


def _diff(processor: Any, swift_ids: list[int], our_ids: list[int]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(swift_ids, our_ids)) if a != b), min(len(swift_ids), len(our_ids)))
    show = lambda ids: repr(processor.decode([t for t in ids[max(0, at - 20):at + 20] if t != IMAGE_PAD]))  # noqa: E731
    return (f"prompt ids differ at {at} (swift {len(swift_ids)} ids, ours {len(our_ids)}):\n"
            f"  swift: {show(swift_ids)}\n  ours:  {show(our_ids)}")
