"""``key=value`` command lines for the small stand-alone tools (synth, check, tiny).

The pipeline stages are Hydra apps; these tools take a handful of typed arguments,
parsed onto a dataclass so unknown keys and wrong types are one-line errors.
"""
from __future__ import annotations

import sys
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


def parse_args(schema: type[T], argv: list[str] | None = None) -> T:
    """Parse ``key=value`` arguments onto dataclass ``schema``; exit 2 with a message on error."""
    argv = sys.argv[1:] if argv is None else argv
    wants_help = any(arg in ("-h", "--help") for arg in argv)
    bad = [arg for arg in argv if "=" not in arg and arg not in ("-h", "--help")]
    if bad or wants_help:
        fields = " ".join(f"{name}=..." for name in schema.__dataclass_fields__)  # type: ignore[attr-defined]
        print(f"usage: {fields}" + (f"\nnot key=value: {' '.join(bad)}" if bad else ""), file=sys.stderr)
        raise SystemExit(2 if bad else 0)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(argv))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise ValueError(f"missing required argument(s): {', '.join(m + '=...' for m in missing)}")
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except (OmegaConfBaseException, ValueError) as error:
        message = str(error).splitlines()[0]
        valid = ", ".join(schema.__dataclass_fields__)  # type: ignore[attr-defined]
        print(f"error: {message}\nvalid keys: {valid}", file=sys.stderr)
        raise SystemExit(2) from None
