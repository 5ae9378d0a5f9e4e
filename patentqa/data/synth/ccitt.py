"""Re-encode a synthetic set the way real patent PDFs are stored: bilevel CCITT G4 page scans.

    python -m patentqa.data.synth.ccitt src=DIR out=DIR [threshold=128]

Each page's scan is taken out of the PDF at its own resolution, thresholded to 1 bit, written as
a CCITT Group 4 TIFF (libtiff through Pillow) and wrapped into a PDF by img2pdf, an outside tool
that embeds the G4 data as it is (``/CCITTFaxDecode``), at the same page size. Questions,
truth and ``synth.json`` are copied, so the OCR scores of both encodings compare one to one.
"""
from __future__ import annotations

import io
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from patentqa.tracking import atomic_write


def g4_pdf(pdf: Path, threshold: int = 128) -> bytes:
    """The PDF with every page's image as a bilevel G4 scan at the page's size."""
    import img2pdf
    import pymupdf
    from PIL import Image

    pages = []
    with pymupdf.open(pdf) as doc:
        for page in doc:
            images = page.get_images(full=True)
            if not images:
                raise ValueError(f"page {page.number + 1} holds no scanned image (a text page is no scan)")
            xref = images[0][0]
            image = Image.open(io.BytesIO(doc.extract_image(xref)["image"])).convert("L")
            dpi = round(image.width / (page.rect.width / 72))
            bilevel = image.point(lambda v: 255 if v >= threshold else 0).convert("1")
            buffer = io.BytesIO()
            bilevel.save(buffer, format="TIFF", compression="group4", dpi=(dpi, dpi))
            pages.append(buffer.getvalue())
    return img2pdf.convert(pages)


class CcittError(ValueError):
    """``src``/``out`` cannot be re-encoded (the message names the path and why)."""


def reencode(src: Path, out: Path, threshold: int = 128) -> tuple[int, list[str]]:
    """Copy the CCKS-layout set ``src`` to ``out`` with G4 PDFs: (PDFs written, "path: reason" per PDF that
    could not be read; it is left out, every other file is written, each atomically)."""
    if not src.is_dir():
        raise CcittError(f"src={src}: no such directory")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise CcittError(f"out={out}: inside src={src}; choose a directory outside it")
    pdfs = sorted(src.rglob("*.pdf"))
    if not pdfs:
        raise CcittError(f"src={src}: no PDF under it (expected the CCKS layout: SPLIT/documents/*.pdf)")
    written, problems = 0, []
    for path in sorted(src.rglob("*")):
        target = out / path.relative_to(src)
        if path.is_dir():
            continue
        if path.suffix == ".pdf":
            try:
                data = g4_pdf(path, threshold)
            except Exception as error:  # noqa: BLE001 - a corrupt PDF is reported, the rest goes on
                problems.append(f"{path}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
                continue
            atomic_write(target, data)
            written += 1
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, path.read_bytes())
    return written, problems


@dataclass
class CcittArgs:
    src: str = MISSING
    out: str = MISSING
    threshold: int = 128  # gray level at and above which a pixel is paper


def main(argv: list[str] | None = None) -> int:
    from patentqa.cli import parse_args

    args = parse_args(CcittArgs, argv)
    try:
        count, problems = reencode(Path(args.src), Path(args.out), args.threshold)
    except CcittError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"problem: {problem} (left out)", file=sys.stderr)
    print(f"wrote {count} CCITT G4 PDFs to {args.out}" + (f"; {len(problems)} PDF(s) could not be read" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
