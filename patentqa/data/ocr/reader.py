"""The OCR text layer: every page read by a real Chinese OCR model, cached per page.

The model is PP-OCRv4 (detection + recognition, ONNX) as shipped inside the
``rapidocr-onnxruntime`` 1.4.4 wheel: nothing is downloaded at run time. Each page is rendered
from its PDF at ``OcrSpec.dpi`` (grayscale), read, and stored as JSON: every text line with its
box in PDF points (origin top-left, y down) and its confidence, the page size, and the page's
figures (``patentqa.data.ocr.figures``: each ``图N`` caption with the region it labels).

Cache: ``CACHE/ocr/<pdf sha256[:2]>/<sha256>/<spec key>/p0001.json``, written atomically, so a
killed run resumes where it stopped and never reads half a file. Pages run in a process pool
(one model per worker, one thread each) behind a progress bar. A page that fails is reported
with the PDF, the page and the error, and gets no text layer; the rest go on.
``python -m patentqa.data.ocr`` (``__main__``) runs it over a split; ``truth`` scores it.
"""
from __future__ import annotations

import json
import re
import time
import unicodedata
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from patentqa.cpus import pool_size
from patentqa.data.corpus import Document, Problem
from patentqa.tracking import atomic_write

ENGINE = "rapidocr-onnxruntime-1.4.4/PP-OCRv4"
LAYOUT_VERSION = 5  # figure finding (patentqa.data.ocr.figures): bump when its output changes
PageKey = tuple[str, int]


@dataclass(frozen=True)
class OcrSpec:
    """How pages are read; every field is part of the cache key."""

    dpi: int = 150               # render resolution: 11-pt body text ~24 px high; 200 read no better, 1.3x slower
    max_side: int = 2400         # the model's input cap (rapidocr max_side_len); larger pages are shrunk
    min_confidence: float = 0.5  # lines recognised below this are dropped (rapidocr text_score)

    def key(self) -> str:
        return f"{re.sub(r'[^A-Za-z0-9.]+', '-', ENGINE)}-dpi{self.dpi}-side{self.max_side}-conf{self.min_confidence}" \
               f"-layout{LAYOUT_VERSION}"


@dataclass
class OcrResult:
    """Where each page's layer is, and what happened."""

    paths: dict[PageKey, Path] = field(default_factory=dict)
    read: int = 0
    cached: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    def layer(self, key: PageKey) -> Optional[dict[str, Any]]:
        path = self.paths.get(key)
        return load_layer(path) if path else None


def layer_path(cache_dir: Path, document: Document, page: int, spec: OcrSpec) -> Path:
    return cache_dir / document.sha256[:2] / document.sha256 / spec.key() / f"p{page:04d}.json"


def load_layer(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --- one page ---------------------------------------------------------------------------------

_ENGINE: Any = None


def _engine(spec: OcrSpec) -> Any:
    """One RapidOCR per process, single-threaded (the pool gives the parallelism)."""
    global _ENGINE
    if _ENGINE is None:
        from rapidocr_onnxruntime import RapidOCR

        _ENGINE = RapidOCR(max_side_len=spec.max_side, text_score=spec.min_confidence, rec_batch_num=1,
                           intra_op_num_threads=1, inter_op_num_threads=1)
    return _ENGINE


def render_gray(pdf: str, page: int, dpi: int) -> tuple[Any, float, float]:
    """(H x W uint8 array, page width pt, page height pt) of a 1-based page."""
    import numpy as np
    import pymupdf

    with pymupdf.open(pdf) as doc:
        p = doc.load_page(page - 1)
        pix = p.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY, alpha=False)
        width, height = p.rect.width, p.rect.height
    image = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.stride)[:, :pix.width].copy()
    return image, width, height


def read_lines(image: Any, scale: float, spec: OcrSpec) -> list[dict[str, Any]]:
    """OCR lines of a gray page image: text, box in points ([x0, y0, x1, y1]) and confidence."""
    # no angle classifier: scans are upright, and it turned long lines upside down (CER 11% -> 0.4%)
    found, _ = _engine(spec)(image, use_cls=False)
    lines = []
    for quad, text, confidence in found or []:
        xs, ys = [pt[0] * scale for pt in quad], [pt[1] * scale for pt in quad]
        lines.append({"text": str(text), "box": [round(min(xs), 2), round(min(ys), 2), round(max(xs), 2),
                                                  round(max(ys), 2)], "confidence": round(float(confidence), 4)})
    return lines


SINGLE_DIGIT_WIDTH = 0.26  # width / height below which a lone "1" is a stroke fragment, not a digit
LABEL_TEXT = re.compile(r"\d{1,4}[A-Za-z]?")  # part numbers: 12, 105, 10a


def read_labels(image: Any, scale: float, spec: OcrSpec, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Part numbers on a drawing page that the line detector missed (small isolated digits).

    Connected ink components of glyph size (4-16 pt high, at most 14 pt wide) are grouped into
    words (glyphs on one baseline, gaps under 0.6 glyph heights), cropped with 3 pt of margin and
    read by the recognition model alone; a crop that reads as a part number with enough
    confidence, where no OCR line already is, becomes a line (``"source": "label"``).

    A digit that a leader line or a link runs into belongs to that line's component. So a second
    pass erases straight strokes longer than any digit (Hough segments of 12 pt and more) and reads
    again, keeping only what adds to the first: a number where nothing was read, or one that
    extends a single digit read there ("1" of a "12"). What an erased stroke leaves behind reads as
    a confident "1", so a single digit of the second pass must be a glyph (at least
    ``SINGLE_DIGIT_WIDTH`` of its height wide: Helvetica's "1" with its flag is ~0.31) read with
    confidence 0.9 or more.
    """
    import cv2
    import numpy as np

    ink = (image < 128).astype(np.uint8)
    found = [l for l in _read_words(image, ink, scale, spec) if not _overlaps(l, lines)]
    strokes = cv2.HoughLinesP(ink * 255, 1, np.pi / 180, threshold=int(10 / scale), minLineLength=int(12 / scale),
                              maxLineGap=2)
    for x1, y1, x2, y2 in (strokes.reshape(-1, 4) if strokes is not None else []):
        cv2.line(ink, (int(x1), int(y1)), (int(x2), int(y2)), 0, thickness=max(3, int(1.2 / scale)))
    for line in _read_words(np.where(ink > 0, 0, 255).astype(np.uint8), ink, scale, spec):
        width, height = line["box"][2] - line["box"][0], line["box"][3] - line["box"][1]
        stroke = len(line["text"]) == 1 and (width < SINGLE_DIGIT_WIDTH * height or line["confidence"] < 0.9)
        if stroke or _overlaps(line, lines):
            continue
        under = [f for f in found if _inside(f["box"], line["box"]) or _inside(line["box"], f["box"])]
        if all(len(f["text"]) == 1 and line["text"][0 if f["box"][0] <= line["box"][0] + 1 else -1] == f["text"]
               for f in under):
            found = [f for f in found if f not in under] + [line]
    return found


def _overlaps(line: dict[str, Any], others: list[dict[str, Any]]) -> bool:
    return any(_inside(line["box"], o["box"]) or _inside(o["box"], line["box"]) for o in others)


def _inside(a: list[float], b: list[float]) -> bool:
    """The centre of box ``a`` lies in box ``b``."""
    x, y = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    return b[0] <= x <= b[2] and b[1] <= y <= b[3]


def _read_words(pixels: Any, ink: Any, scale: float, spec: OcrSpec) -> list[dict[str, Any]]:
    """Glyph-sized components of ``ink`` grouped into words and read from ``pixels``: part numbers only."""
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    glyphs = sorted([x, y, x + w, y + h] for x, y, w, h, area in stats[1:count]
                    if 4 / scale <= h <= 16 / scale and w <= 14 / scale and area >= 3)
    words: list[list[int]] = []
    for glyph in glyphs:
        height = glyph[3] - glyph[1]
        for word in words:
            overlap = min(glyph[3], word[3]) - max(glyph[1], word[1])
            if 0 <= glyph[0] - word[2] <= 0.6 * height and overlap > 0.5 * height:
                word[:] = [word[0], min(word[1], glyph[1]), max(word[2], glyph[2]), max(word[3], glyph[3])]
                break
        else:
            words.append(list(glyph))
    pad = int(3 / scale)
    crops = [cv2.cvtColor(pixels[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad], cv2.COLOR_GRAY2BGR)
             for x0, y0, x1, y1 in words]
    read, _ = _engine(spec).text_rec(crops) if crops else ([], 0.0)
    return [{"text": text, "box": [round(float(v) * scale, 2) for v in (x0, y0, x1, y1)],
             "confidence": round(float(confidence), 4), "source": "label"}
            for (x0, y0, x1, y1), (text, confidence) in zip(words, read)
            if confidence >= spec.min_confidence and LABEL_TEXT.fullmatch(text)]


def ocr_page(pdf: str, page: int, spec: OcrSpec) -> dict[str, Any]:
    """The text layer of one page (lines in reading order, figures)."""
    from patentqa.data.ocr.figures import find_figures, is_drawing_page

    started = time.perf_counter()
    image, width, height = render_gray(pdf, page, spec.dpi)
    scale = 72.0 / spec.dpi
    lines = read_lines(image, scale, spec)
    if is_drawing_page(lines, height, float((image < 160).mean())):
        lines += read_labels(image, scale, spec, lines)
    lines = reading_order(lines)
    figures = find_figures(image, scale, width, height, lines)
    return {"page": page, "width": round(width, 2), "height": round(height, 2), "engine": ENGINE,
            "spec": asdict(spec), "lines": lines, "figures": [asdict(f) for f in figures],
            "seconds": round(time.perf_counter() - started, 3)}


def reading_order(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows top to bottom (lines whose vertical centres are within half a line height), left to right."""
    rows: list[list[dict[str, Any]]] = []
    for line in sorted(lines, key=lambda l: (l["box"][1] + l["box"][3]) / 2):
        centre, height = (line["box"][1] + line["box"][3]) / 2, line["box"][3] - line["box"][1]
        if rows:
            last = rows[-1][-1]
            if abs(centre - (last["box"][1] + last["box"][3]) / 2) <= 0.5 * max(height, last["box"][3] - last["box"][1]):
                rows[-1].append(line)
                continue
        rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda l: l["box"][0])]


def layer_text(layer: dict[str, Any], skip_top: float = 0.0) -> str:
    """The page's text, one OCR line per line, reading order; ``skip_top``: drop lines above it (pt)."""
    return "\n".join(line["text"] for line in layer["lines"] if (line["box"][1] + line["box"][3]) / 2 >= skip_top)


def normalize_text(text: str) -> str:
    """NFKC, whitespace removed: what CER and matching compare."""
    return "".join(unicodedata.normalize("NFKC", text).split())


# --- many pages ---------------------------------------------------------------------------------

def _work(pdf: str, page: int, target: str, spec: OcrSpec) -> tuple[int, Optional[str], float]:
    """Worker: OCR one page into ``target``; (page, error or None, seconds)."""
    started = time.perf_counter()
    try:
        layer = ocr_page(pdf, page, spec)
        atomic_write(target, (json.dumps(layer, ensure_ascii=False) + "\n").encode("utf-8"))
        return page, None, time.perf_counter() - started
    except Exception as error:  # one bad page must not stop the others
        return page, f"{type(error).__name__}: {error}", time.perf_counter() - started


def ocr_documents(documents: list[Document], cache_dir: str | Path, spec: OcrSpec, workers: int | None = None,
                  progress: bool = True) -> OcrResult:
    """The text layer of every page of ``documents``; pages already cached are not read again."""
    cache_dir = Path(cache_dir).resolve()
    result = OcrResult()
    started = time.perf_counter()
    todo: list[tuple[Document, int, Path]] = []
    for document in documents:
        for page in range(1, document.page_count + 1):
            path = layer_path(cache_dir, document, page, spec)
            result.paths[(document.name, page)] = path
            if path.is_file():
                result.cached += 1
            else:
                todo.append((document, page, path))
    if todo:
        workers = pool_size(workers, len(todo))
        with ProcessPoolExecutor(max_workers=workers) as pool, \
                tqdm(total=len(todo), unit="page", desc="ocr pages", disable=not progress) as bar:
            futures = {pool.submit(_work, str(d.path), page, str(path), spec): d for d, page, path in todo}
            for future in as_completed(futures):
                document = futures[future]
                try:
                    page, error, _ = future.result()
                except Exception as crash:  # the worker died (e.g. killed)
                    page, error = None, f"{type(crash).__name__}: {crash}"
                if error:
                    where = f"page {page}" if page else "a page"
                    result.problems.append(Problem(str(document.path), f"{where}: OCR failed ({error}); "
                                                                       "no text layer for it"))
                    if page:
                        result.paths.pop((document.name, page), None)
                else:
                    result.read += 1
                bar.update(1)
        for document, page, path in todo:  # a crashed worker: its pages have no file
            if (document.name, page) in result.paths and not path.is_file():
                result.paths.pop((document.name, page))
    result.seconds = time.perf_counter() - started
    return result


def summarize(result: OcrResult) -> dict[str, Any]:
    """Pages, lines, characters, confidence, figures and problems of a finished OCR pass."""
    lines = chars = figures = fallback = drawing = 0
    confidence: list[float] = []
    for path in result.paths.values():
        layer = load_layer(path)
        lines += len(layer["lines"])
        chars += sum(len(line["text"]) for line in layer["lines"])
        confidence += [line["confidence"] for line in layer["lines"]]
        figures += sum(not f["fallback"] for f in layer["figures"])
        fallback += sum(bool(f["fallback"]) for f in layer["figures"])
        drawing += bool(layer["figures"])
    return {"pages": len(result.paths), "read": result.read, "cached": result.cached,
            "seconds": round(result.seconds, 2),
            "pages_per_s": round(result.read / result.seconds, 3) if result.read and result.seconds else None,
            "lines": lines, "chars": chars,
            "mean_confidence": round(sum(confidence) / len(confidence), 4) if confidence else None,
            "drawing_pages": drawing, "figures": figures, "figure_fallbacks": fallback,
            "problems": [str(p) for p in result.problems]}
