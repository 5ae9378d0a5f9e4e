"""``python -m patentqa.data.synth out_dir=DIR n_docs=N seed=S [scan_dpi=300 ...]``: write a synthetic set."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, fields

from omegaconf import MISSING

from patentqa.cli import parse_args
from patentqa.data.synth.patents import SynthSpec, generate, validate


@dataclass
class SynthArgs(SynthSpec):
    out_dir: str = MISSING


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: generate, print a one-line summary; bad arguments exit 2 with a message."""
    args = parse_args(SynthArgs, argv)
    spec = SynthSpec(**{f.name: getattr(args, f.name) for f in fields(SynthSpec)})
    try:
        validate(spec)
        start = time.perf_counter()
        counts = generate(args.out_dir, spec)
    except (ValueError, FileExistsError) as err:
        print(f"patentqa.data.synth: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {spec.n_docs} patents ({counts['documents']['train']} train, {counts['documents']['test']} test), "
          f"{counts['pages']} pages, {sum(counts['questions'].values())} questions {counts['kinds']} "
          f"to {args.out_dir} in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
