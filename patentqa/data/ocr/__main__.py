"""The OCR layer of a split, cached per page; with ``truth=true`` scored against a synthetic set's truth.

    python -m patentqa.data.ocr dir=DIR split=train [truth=true] [dpi=200] [workers=0]

prints a summary; with ``truth=true`` on a synthetic set it scores the layer against the
generator's ground truth (``patentqa.data.ocr.truth``). Its last line is one JSON object.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from patentqa.cli import parse_args
from patentqa.data.corpus import read_split
from patentqa.data.ocr.reader import OcrSpec, ocr_documents, summarize
from patentqa.data.ocr.truth import format_scores, score_split


@dataclass
class OcrArgs:
    """The command's arguments."""

    dir: str = ""                 # a dataset in the CCKS layout
    split: str = "train"
    truth: bool = False           # score against {split}/truth/*.json (synthetic sets)
    dpi: int = OcrSpec.dpi
    workers: int = 0              # processes; 0 = one per CPU
    cache_dir: str = ".cache"     # the layer goes to CACHE/ocr/


def main(argv: list[str] | None = None) -> int:
    args = parse_args(OcrArgs, argv)
    if not args.dir:
        print("usage: python -m patentqa.data.ocr dir=DIR split=train [truth=true]", file=sys.stderr)
        return 2
    data = read_split(args.dir, args.split, require_answer=False)
    if not data.documents:  # nothing to read: say why in one line, write nothing
        reason = data.problems[0] if data.problems else f"{Path(args.dir) / args.split}: no readable document"
        print(f"error: no document to OCR in dir={args.dir} split={args.split}: {reason}", file=sys.stderr)
        return 2
    for problem in data.problems:
        print(f"problem: {problem}", file=sys.stderr)
    spec = OcrSpec(dpi=args.dpi)
    result = ocr_documents(sorted(data.documents.values(), key=lambda d: d.name),
                           Path(args.cache_dir) / "ocr", spec, workers=args.workers or None)
    summary = summarize(result)
    for problem in summary["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"ocr: {summary['pages']} pages ({summary['read']} read, {summary['cached']} cached) in "
          f"{summary['seconds']} s; {summary['lines']} lines, {summary['chars']} characters; "
          f"{summary['figures']} figures, {summary['figure_fallbacks']} whole-page fallbacks")
    if args.truth:
        scores = score_split(Path(args.dir), args.split, data.documents, result)
        print(format_scores(scores))
        summary.update(scores)
    print(json.dumps(summary, ensure_ascii=False, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
