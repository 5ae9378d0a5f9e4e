"""Figure regions on drawing pages: each ``图N`` caption and the drawing it labels.

Patent drawing pages put a caption ``图N`` under (or beside) each figure. Given a page's OCR
lines and its gray image:

1. captions are OCR lines that read exactly ``图N``; a page with captions, or with ink but
   hardly any running text, is a drawing page;
2. captions whose vertical centres are within ``ROW_PT`` form a row; the band of a row runs
   from the row above (or the page header) down to its captions; side-by-side captions split
   their band at the midpoints between them;
3. a figure's box is the ink inside its cell (pixels darker than ``INK``, at ~50 DPI), with the
   header and caption text masked out.

A drawing page without captions, or a caption whose cell holds no ink, falls back to the whole
page (``fallback=True``), and callers count those. Boxes are in PDF points, origin top-left.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Optional

CAPTION = re.compile(r"^图\s*(\d{1,3})[.。]?$")
ROW_PT = 20.0        # captions this close vertically sit side by side
HEADER_SHARE = 0.09  # the top 9% of a page holds the running header (number, "说明书附图", page count)
INK = 160            # gray level below which a pixel is ink
LAYOUT_DPI = 50      # resolution of the ink search
MIN_TEXT_CHARS = 10  # a line this long is running text, not a label


@dataclass(frozen=True)
class FigureRegion:
    """One figure of a drawing page: its caption number (None if unknown) and box in points."""

    number: Optional[int]
    box: list[float]
    caption_box: Optional[list[float]] = None
    fallback: bool = False


def caption_number(text: str) -> Optional[int]:
    match = CAPTION.match("".join(unicodedata.normalize("NFKC", text).split()))
    return int(match.group(1)) if match else None


def _centre_y(box: list[float]) -> float:
    return (box[1] + box[3]) / 2


def is_drawing_page(lines: list[dict[str, Any]], height: float, ink_share: float) -> bool:
    """Captions, or ink with fewer than three running-text lines below the header."""
    if any(caption_number(line["text"]) is not None for line in lines):
        return True
    body = [line for line in lines if _centre_y(line["box"]) > HEADER_SHARE * height
            and len(line["text"]) >= MIN_TEXT_CHARS]
    return len(body) < 3 and ink_share > 0.01


def find_figures(image: Any, scale: float, width: float, height: float,
                 lines: list[dict[str, Any]]) -> list[FigureRegion]:
    """The figures of one page (empty for a text page); ``scale`` = points per image pixel."""
    import numpy as np

    factor = max(1, round(72.0 / scale / LAYOUT_DPI))
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    ink = image[:h, :w].reshape(h // factor, factor, w // factor, factor).min(axis=(1, 3)) < INK
    unit = scale * factor  # points per ink pixel
    if not is_drawing_page(lines, height, float(ink.mean())):
        return []
    whole = [0.0, 0.0, round(width, 2), round(height, 2)]
    header_bottom = HEADER_SHARE * height

    def mask(box: list[float], pad: float = 2.0) -> None:
        x0, y0 = max(0, int((box[0] - pad) / unit)), max(0, int((box[1] - pad) / unit))
        ink[y0:int((box[3] + pad) / unit) + 1, x0:int((box[2] + pad) / unit) + 1] = False

    captions = []
    for line in lines:
        number = caption_number(line["text"])
        if number is not None:
            captions.append((number, line["box"]))
            mask(line["box"])
        elif _centre_y(line["box"]) < header_bottom:
            mask(line["box"])
    if not captions:
        return [FigureRegion(None, whole, None, fallback=True)]
    rows: list[list[tuple[int, list[float]]]] = []
    for caption in sorted(captions, key=lambda c: _centre_y(c[1])):
        if rows and abs(_centre_y(caption[1]) - _centre_y(rows[-1][-1][1])) <= ROW_PT:
            rows[-1].append(caption)
        else:
            rows.append([caption])
    figures, top = [], header_bottom
    for row in rows:
        bottom = min(box[1] for _, box in row)
        row = sorted(row, key=lambda c: (c[1][0] + c[1][2]) / 2)
        centres = [(box[0] + box[2]) / 2 for _, box in row]
        cuts = [0.0] + [(a + b) / 2 for a, b in zip(centres, centres[1:])] + [width]
        for (number, box), left, right in zip(row, cuts, cuts[1:]):
            cell = ink[int(top / unit):int(bottom / unit), int(left / unit):int(right / unit)]
            ys, xs = np.nonzero(cell)
            if len(ys) == 0:
                figures.append(FigureRegion(number, [round(left, 2), round(top, 2), round(right, 2), round(bottom, 2)],
                                            box, fallback=True))
                continue
            x0, y0 = float(left + xs.min() * unit), float(top + ys.min() * unit)
            x1, y1 = float(left + (xs.max() + 1) * unit), float(top + (ys.max() + 1) * unit)
            figures.append(FigureRegion(number, [round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)], box))
        top = max(box[3] for _, box in row)
    return figures


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
