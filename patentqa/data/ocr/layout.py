"""Document structure for prompts: each page's OCR text and figures, and figure crops.

``Layout`` wraps a finished OCR pass (``patentqa.data.ocr.reader``) for the prompt builder's variants
and the text retrievers:

- ``text(document, page)``: the page's OCR text in reading order;
- ``figure_for(question, document)``: the figure a page question is about: the ``图N`` it names;
  else the page's only figure; else the figure whose box holds the most of the question's part
  numbers (as OCR read them); else None (the whole page is shown);
- ``crop(document, page, box, budget)``: that figure rendered from the PDF at a pixel budget,
  cached like pages (``CACHE/crops/<pdf sha256>/<spec>/p0003-<box>-px<budget>.jpg``, atomic).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from patentqa.data.corpus import Document, Question
from patentqa.data.ocr.reader import OcrResult, layer_text, normalize_text, summarize
from patentqa.data.pages import RenderSpec, encode_page, render_page
from patentqa.data.questions import parse_question
from patentqa.tracking import atomic_write

CROP_MARGIN_PT = 6.0  # around a figure's ink box, so strokes at its edge are not cut


@dataclass
class Layout:
    """OCR layers of the dataset's pages, and figure crops rendered on demand (see module doc)."""

    ocr: OcrResult
    documents: dict[str, Document]
    crop_dir: Path
    render_spec: RenderSpec
    _layers: dict[tuple[str, int], Optional[dict[str, Any]]] = field(default_factory=dict)

    def layer(self, document: str, page: int) -> Optional[dict[str, Any]]:
        key = (document, page)
        if key not in self._layers:
            self._layers[key] = self.ocr.layer(key)
        return self._layers[key]

    def text(self, document: str, page: int) -> Optional[str]:
        layer = self.layer(document, page)
        return layer_text(layer) if layer else None

    def label_positions(self, document: str, page: int, number: int) -> list[tuple[float, float]]:
        """Centres of the OCR lines on a page that read as part number ``number``."""
        layer = self.layer(document, page) or {"lines": []}
        return [((l["box"][0] + l["box"][2]) / 2, (l["box"][1] + l["box"][3]) / 2) for l in layer["lines"]
                if str(number) in re.findall(r"\d+", normalize_text(l["text"]))
                and len(normalize_text(l["text"])) <= 6]

    def figure_for(self, question: Question, document: Document) -> Optional[dict[str, Any]]:
        """The figure region a page question asks about, or None (see module doc)."""
        parsed = parse_question(question.question)
        layer = self.layer(document.name, parsed.page) if parsed.page else None
        figures = [f for f in (layer or {}).get("figures", []) if not f["fallback"]]
        if not figures:
            return None
        if parsed.figure is not None:
            named = [f for f in figures if f["number"] == parsed.figure]
            if named:
                return named[0]
        if len(figures) == 1:
            return figures[0]
        counts = []
        for figure in figures:
            x0, y0, x1, y1 = figure["box"]
            inside = sum(any(x0 <= x <= x1 and y0 <= y <= y1 for x, y in
                             self.label_positions(document.name, parsed.page, n)) for n in parsed.parts)
            counts.append(inside)
        best = max(counts)
        return figures[counts.index(best)] if best and counts.count(best) == 1 else None

    def crop(self, document: Document, page: int, box: list[float], max_pixels: int, min_pixels: int) -> Path:
        """The figure ``box`` of a page rendered at ``max_pixels`` (cached; see module doc)."""
        import pymupdf
        from qwen_vl_utils import smart_resize

        spec = dataclasses.replace(self.render_spec, max_pixels=max_pixels, min_pixels=min_pixels)
        tag = "_".join(f"{v:.0f}" for v in box)
        path = self.crop_dir / document.sha256[:2] / document.sha256 / spec.key() / f"p{page:04d}-{tag}{spec.suffix}"
        if path.is_file():
            return path
        with pymupdf.open(document.path) as doc:
            pdf_page = doc.load_page(page - 1)
            clip = pymupdf.Rect(box[0] - CROP_MARGIN_PT, box[1] - CROP_MARGIN_PT,
                                box[2] + CROP_MARGIN_PT, box[3] + CROP_MARGIN_PT) & pdf_page.rect
            scale = 600 / 72  # the page cache's reference resolution (pages.target_size)
            height, width = smart_resize(round(clip.height * scale), round(clip.width * scale), factor=spec.factor,
                                         min_pixels=min_pixels, max_pixels=max_pixels)
            atomic_write(path, encode_page(render_page(pdf_page, (width, height), spec, clip=clip), spec))
        return path

    def summary(self) -> dict[str, Any]:
        return summarize(self.ocr)
