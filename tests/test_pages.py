"""Page rendering: the size the model sees, a content-addressed cache, nothing rendered twice."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from patentqa.data.corpus import inspect_pdf
from patentqa.data.pages import RenderSpec, page_path, render_documents
from salted import scan_pdf

SPEC = RenderSpec(max_pixels=200_704)  # 256 image tokens


@pytest.fixture()
def documents(tmp_path: Path):
    docs = []
    for index, pages in enumerate((3, 4)):
        scan_pdf(tmp_path / f"d{index}.pdf", pages=pages, seed=index)
        docs.append(inspect_pdf(tmp_path / f"d{index}.pdf"))
    return docs


def test_pages_render_once_at_the_model_size(tmp_path: Path, documents) -> None:
    from qwen_vl_utils import fetch_image

    cache = tmp_path / "cache"
    first = render_documents(documents, cache, SPEC, workers=2, progress=False)
    assert (first.rendered, first.cached, first.problems) == (7, 0, [])
    assert set(first.paths) == {("d0.pdf", p) for p in (1, 2, 3)} | {("d1.pdf", p) for p in (1, 2, 3, 4)}
    for path in first.paths.values():
        with Image.open(path) as image:
            width, height = image.size
            assert width % 28 == 0 and height % 28 == 0 and width * height <= SPEC.max_pixels
            # the processor's own resize leaves the rendered page as it is
            seen = fetch_image({"image": str(path), "max_pixels": SPEC.max_pixels, "min_pixels": SPEC.min_pixels})
            assert seen.size == (width, height)
    mtimes = {p: p.stat().st_mtime_ns for p in first.paths.values()}
    second = render_documents(documents, cache, SPEC, workers=2, progress=False)
    assert (second.rendered, second.cached) == (0, 7)
    assert {p: p.stat().st_mtime_ns for p in second.paths.values()} == mtimes
    assert not list(cache.rglob(".tmp-*")), "no temp files left behind"


def test_cache_key_separates_budgets_and_formats(tmp_path: Path, documents) -> None:
    other = RenderSpec(max_pixels=50_176, colorspace="gray", format="png")
    assert page_path(tmp_path, documents[0], 1, SPEC) != page_path(tmp_path, documents[0], 1, other)
    result = render_documents(documents[:1], tmp_path, other, workers=1, progress=False)
    with Image.open(result.paths[("d0.pdf", 1)]) as image:
        assert image.mode == "L" and image.size[0] * image.size[1] <= 50_176


def test_a_page_that_fails_is_reported_and_the_rest_render(tmp_path: Path, documents) -> None:
    broken = documents[1]
    broken.path.write_bytes(b"%PDF-1.7\n garbage")  # changed after it was inspected
    result = render_documents(documents, tmp_path / "cache", SPEC, workers=2, progress=False)
    assert result.rendered == 3 and len(result.problems) == 1
    assert "d1.pdf" in result.problems[0].file and all(doc == "d0.pdf" for doc, _ in result.paths)


def test_colour_management_off_keeps_the_pixels_and_has_its_own_key(tmp_path: Path, documents) -> None:
    import numpy as np

    managed = RenderSpec(max_pixels=SPEC.max_pixels, color_management=True)
    assert page_path(tmp_path, documents[0], 1, SPEC) != page_path(tmp_path, documents[0], 1, managed)
    images = []
    for spec in (SPEC, managed):
        result = render_documents(documents[:1], tmp_path / spec.key(), spec, workers=1, progress=False)
        with Image.open(result.paths[("d0.pdf", 2)]) as image:
            images.append(np.asarray(image.convert("RGB"), dtype=np.int16))
    assert images[0].shape == images[1].shape
    assert np.abs(images[0] - images[1]).mean() < 1.0  # the scans' gray ICC profile maps like DeviceGray
