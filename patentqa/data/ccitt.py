"""Re-encode a synthetic set the way real patent PDFs are stored: bilevel CCITT G4 page scans.

    python -m patentqa.data.ccitt src=DIR out=DIR [threshold=128]

Each page's scan is taken out of the PDF at its own resolution, thresholded to 1 bit, written as
a CCITT Group 4 TIFF (libtiff through Pillow) and wrapped into a PDF by img2pdf, an outside tool
that embeds the G4 data as it is (``/CCITTFaxDecode``), at the same page size. Questions,
truth and ``synth.json`` are copied, so the OCR scores of both encodings compare one to one.
"""
from __future__ import annotations

import io
import shutil
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
            xref = page.get_images(full=True)[0][0]
            image = Image.open(io.BytesIO(doc.extract_image(xref)["image"])).convert("L")
            dpi = round(image.width / (page.rect.width / 72))
            bilevel = image.point(lambda v: 255 if v >= threshold else 0).convert("1")
            buffer = io.BytesIO()
            bilevel.save(buffer, format="TIFF", compression="group4", dpi=(dpi, dpi))
            pages.append(buffer.getvalue())
    return img2pdf.convert(pages)


def reencode(src: Path, out: Path, threshold: int = 128) -> int:
    """Copy the CCKS-layout set ``src`` to ``out`` with G4 PDFs; the number of PDFs written."""
    written = 0
    for path in sorted(src.rglob("*")):
        target = out / path.relative_to(src)
        if path.is_dir():
            continue
        if path.suffix == ".pdf":
            atomic_write(target, g4_pdf(path, threshold))
            written += 1
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return written


@dataclass
class CcittArgs:
    src: str = MISSING
    out: str = MISSING
    threshold: int = 128  # gray level at and above which a pixel is paper


def main(argv: list[str] | None = None) -> int:
    from patentqa.cli import parse_args

    args = parse_args(CcittArgs, argv)
    count = reencode(Path(args.src), Path(args.out), args.threshold)
    print(f"wrote {count} CCITT G4 PDFs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
