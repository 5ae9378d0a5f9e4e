"""Drawing and scanning the synthetic patents of ``patentqa.data.synth``.

Pages are drawn with PyMuPDF (CJK text in the built-in ``china-s`` font, ASCII in
Helvetica; parts as shapes with leader lines to their numbers), rasterised to grayscale
JPEG scans, and only the scans go into the output PDF. Coordinates are PDF points on an
A4 page, origin top-left, y downwards.
"""
from __future__ import annotations

import math
import random
import re
from functools import lru_cache
from typing import Any

import pymupdf

PAGE_W, PAGE_H = 595.0, 842.0
MARGIN, BODY_TOP, LINE_H, BODY_FS = 70.0, 100.0, 20.0, 11.5
CJK = "china-s"
INK, PAPER = (0, 0, 0), (1, 1, 1)
# drawing areas of the figures on a page holding one or two figures
FIGURE_REGIONS = {1: [(60.0, 95.0, 535.0, 740.0)],
                  2: [(60.0, 85.0, 535.0, 395.0), (60.0, 460.0, 535.0, 770.0)]}
SECTIONS = {"claims": "权利要求书", "description": "说明书", "figure": "说明书附图"}


@lru_cache(maxsize=None)
def font(name: str) -> pymupdf.Font:
    return pymupdf.Font(name)


@lru_cache(maxsize=None)
def char_width(char: str, size: float) -> float:
    """Advance of one character: CJK glyphs are one em, ASCII uses Helvetica metrics."""
    return font("helv").text_length(char, size) if char <= "~" else size


def text_width(text: str, size: float) -> float:
    return sum(char_width(c, size) for c in text)


def put_text(tw: pymupdf.TextWriter, x: float, y: float, text: str, size: float = BODY_FS) -> None:
    """Write a line at baseline ``y``, ASCII runs in Helvetica and the rest in the CJK font."""
    for run in re.findall(r"[ -~]+|[^ -~]+", text):
        tw.append((x, y), run, font=font("helv" if run[0] <= "~" else CJK), fontsize=size)
        x += text_width(run, size)


def wrap(text: str, width: float = PAGE_W - 2 * MARGIN, size: float = BODY_FS) -> list[str]:
    """Break text into lines that fit ``width`` points; closing punctuation never starts a line."""
    lines, line, used = [], "", 0.0
    for char in text:
        w = char_width(char, size)
        glued = char in "，。；、：）)" or (char.isdigit() and line[-1:].isdigit())
        if used + w > width and not glued:
            lines.append(line)
            line, used = "", 0.0
        line, used = line + char, used + w
    return lines + [line] if line else lines


def assign_figures(rng: random.Random, parts: list[Any], n_pages: int) -> list[list[list[int]]]:
    """Part numbers per figure per page: the parts spread over the figures, each once per page."""
    layout = [2 if len(parts) >= 8 and rng.random() < 0.35 else 1 for _ in range(n_pages)]
    numbers = [p.number for p in parts]
    pool = rng.sample(numbers, len(numbers))
    pages: list[list[list[int]]] = []
    n_figs = sum(layout)
    share = math.ceil(len(pool) / n_figs)
    for n in layout:
        cap = min(12 if n == 1 else 8, len(numbers) // n)
        figs = []
        for _ in range(n):
            figs.append(pool[:min(share, cap)])
            pool = pool[min(share, cap):]
        for fig in figs:
            spare = [x for x in numbers if all(x not in f for f in figs)]
            fig += rng.sample(spare, max(0, min(rng.randint(3, cap) - len(fig), len(spare))))
        pages.append([sorted(fig) for fig in figs])
    return pages


def layout_figure(rng: random.Random, region: tuple[float, ...], numbers: list[int]) -> list[dict]:
    """Place each part in its own grid cell: a shape, its number outside it, a leader line."""
    x0, y0, x1, y1 = region
    k, m = len(numbers), 20.0
    cols = max(2, min(4, math.ceil(math.sqrt(k * (x1 - x0) / (y1 - y0)))))
    rows = math.ceil(k / cols)
    cw, ch = (x1 - x0) / cols, (y1 - y0) / rows
    r2 = lambda pt: [round(pt[0], 2), round(pt[1], 2)]  # noqa: E731
    drawn = []
    for number, cell in zip(numbers, sorted(rng.sample(range(rows * cols), k))):
        cx, cy = x0 + cell % cols * cw + m, y0 + cell // cols * ch + m
        iw, ih = cw - 2 * m, ch - 2 * m
        shape = rng.choice(["rect", "rect", "circle"])
        if shape == "rect":
            w, h = iw * rng.uniform(0.5, 0.95), ih * rng.uniform(0.5, 0.95)
        else:
            w = h = min(iw, ih) * rng.uniform(0.6, 0.95)
        bx, by = cx + rng.uniform(0, iw - w), cy + rng.uniform(0, ih - h)
        sx, sy = rng.choice([-1, 1]), rng.choice([-1, 1])
        mid = (bx + w / 2, by + h / 2)
        label = (mid[0] + sx * (w / 2 + m * 0.5), mid[1] + sy * (h / 2 + m * 0.5))
        start = (mid[0] + sx * w * 0.25, mid[1] + sy * h * 0.25)
        drawn.append({"number": number, "shape": shape, "bbox": r2((bx, by)) + r2((bx + w, by + h)),
                      "label": r2(label), "leader": [r2(start), r2((label[0] - sx * 5, label[1] - sy * 4))],
                      "detail": rng.choice(["inner", "lines"])})
    return drawn


def draw_part(sh: pymupdf.Shape, d: dict) -> None:
    """Shape (its white fill hides lines behind it), an inner detail and the leader line."""
    r = pymupdf.Rect(d["bbox"])
    centre = (r.x0 + r.width / 2, r.y0 + r.height / 2)
    if d["shape"] == "rect":
        sh.draw_rect(r)
        sh.finish(color=INK, fill=PAPER, width=1.2)
        if d["detail"] == "inner":
            sh.draw_rect(r + (r.width / 4, r.height / 4, -r.width / 4, -r.height / 4))
        else:
            for f in (1 / 3, 2 / 3):
                sh.draw_line((r.x0, r.y0 + f * r.height), (r.x1, r.y0 + f * r.height))
    else:
        sh.draw_circle(centre, r.width / 2)
        sh.finish(color=INK, fill=PAPER, width=1.2)
        sh.draw_circle(centre, r.width * 0.17)
    sh.draw_line(d["leader"][0], d["leader"][1])
    sh.finish(color=INK, width=0.7)


def draw_figure(sh: pymupdf.Shape, tw: pymupdf.TextWriter, fig: dict) -> None:
    """Lines joining parts to their carriers, the parts, their numbers and the caption 图N."""
    centres = {d["number"]: pymupdf.Rect(d["bbox"]) for d in fig["parts"]}
    for number, carrier in fig["links"]:
        a, b = centres[number], centres[carrier]
        sh.draw_line((a.x0 + a.width / 2, a.y0 + a.height / 2), (b.x0 + b.width / 2, b.y0 + b.height / 2))
        sh.finish(color=INK, width=0.8)
    for d in fig["parts"]:
        draw_part(sh, d)
        text = str(d["number"])
        put_text(tw, d["label"][0] - text_width(text, 10.5) / 2, d["label"][1] + 3.7, text, 10.5)
    x0, _, x1, y1 = fig["region"]
    put_text(tw, (x0 + x1) / 2 - 12, y1 + 28, f"图{fig['figure']}", 14)


def header(tw: pymupdf.TextWriter, stem: str, section: str, index: int, total: int) -> None:
    put_text(tw, MARGIN, 50, f"CN {stem[2:-1]} {stem[-1]}", 10)
    spaced = " ".join(section)
    put_text(tw, (PAGE_W - text_width(spaced, 13)) / 2, 50, spaced, 13)
    put_text(tw, PAGE_W - MARGIN - 40, 50, f"{index}/{total}页", 10)


def front_lines(pat: dict[str, Any], abstract: str) -> list[tuple[float, float, float, str]]:
    """(x, y, size, text) of the bibliographic front page and its abstract."""
    out = [(MARGIN, 70, 16, "(19)国家知识产权局"), (MARGIN, 105, 18, "(12)实用新型专利"),
           (330, 90, 10.5, f"(10)授权公告号 CN {pat['stem'][2:-1]} U"),
           (330, 108, 10.5, f"(45)授权公告日 {pat['granted']}")]
    biblio = [f"(21)申请号 {pat['app_no']}", f"(22)申请日 {pat['filed']}",
              f"(73)专利权人 {pat['applicant']}", f"(72)发明人 {pat['inventors']}",
              f"(51)Int.Cl.  {pat['ipc']}(2006.01)", "(54)实用新型名称", pat["title"], "(57)摘要"]
    return out + [(MARGIN, 150 + i * LINE_H, BODY_FS, t) for i, t in enumerate(biblio + wrap(abstract))]


def line_boxes(info: dict[str, Any]) -> list[list[float]]:
    """[x0, y0, x1, y1] of each text line of a page as drawn (the truth's reading geometry)."""
    if info["role"] == "abstract":
        placed = [(x, y, size, text) for x, y, size, text in info["draw"]]
    else:
        placed = [(MARGIN, BODY_TOP + i * LINE_H, BODY_FS, line) for i, line in enumerate(info["lines"])]
    return [[round(x, 2), round(y - 0.85 * size, 2), round(x + text_width(text, size), 2), round(y + 0.15 * size, 2)]
            for x, y, size, text in placed]


def scan(page: pymupdf.Page, dpi: int, quality: int) -> bytes:
    """The page as a grayscale JPEG at ``dpi``, as a scanner would give it."""
    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY, alpha=False)
    return pix.tobytes("jpeg", jpg_quality=quality)


def render_pdf(stem: str, pages: list[dict], figures: list[dict], dpi: int, quality: int) -> bytes:
    """Draw every page, scan it, and keep only the scans: an image-only, byte-stable PDF."""
    draft, out = pymupdf.open(), pymupdf.open()
    totals = {role: sum(p["role"] == role for p in pages) for role in SECTIONS}
    seen = dict.fromkeys(SECTIONS, 0)
    for info in pages:
        page, role = draft.new_page(width=PAGE_W, height=PAGE_H), info["role"]
        tw, sh = pymupdf.TextWriter(page.rect), page.new_shape()
        if role == "abstract":
            for x, y, size, text in info["draw"]:
                put_text(tw, x, y, text, size)
        else:
            seen[role] += 1
            header(tw, stem, SECTIONS[role], seen[role], totals[role])
        if role in ("claims", "description"):
            for i, line in enumerate(info["lines"]):
                put_text(tw, MARGIN, BODY_TOP + i * LINE_H, line)
        for fig in (f for f in figures if f["page"] == info["page"]):
            draw_figure(sh, tw, fig)
        sh.commit()
        tw.write_text(page)
        scanned = out.new_page(width=PAGE_W, height=PAGE_H)
        scanned.insert_image(scanned.rect, stream=scan(page, dpi, quality))
    out.set_metadata({"producer": "patentqa.data.synth", "creator": "patentqa.data.synth", "title": stem})
    return out.tobytes(garbage=3, deflate=True, no_new_id=True)
