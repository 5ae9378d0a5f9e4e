"""Validate a dataset in the CCKS layout and list every problem.

    python -m patentqa.data.check dir=data/ccks2025 split=train

Prints one line per problem (file:line: reason) and a summary; exits 0 when clean, 1 when not.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass

from omegaconf import MISSING

from patentqa.cli import parse_args
from patentqa.data.corpus import SplitData, read_split
from patentqa.data.questions import parse_question


@dataclass
class CheckArgs:
    dir: str = MISSING
    split: str = "train"
    require_answer: bool | None = None   # default: only in the train split


def check(args: CheckArgs) -> SplitData:
    """Read the split in non-strict mode so every problem is collected."""
    return read_split(args.dir, args.split, require_answer=args.require_answer)


def format_report(data: SplitData) -> str:
    """Problems, one per line, then a summary with the question kinds."""
    lines = [str(problem) for problem in data.problems]
    kinds = Counter(parse_question(q.question).kind for q in data.questions)
    summary = dict(data.summary(), kinds=dict(sorted(kinds.items())),
                   pages=sum(d.page_count for d in data.documents.values()))
    lines.append(("OK: " if not data.problems else "PROBLEMS: ") + json.dumps(summary, ensure_ascii=False))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    data = check(parse_args(CheckArgs, argv))
    print(format_report(data))
    return 1 if data.problems else 0


if __name__ == "__main__":
    sys.exit(main())
