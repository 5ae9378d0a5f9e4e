"""``key=value`` command lines for the small stand-alone tools (synth, check, tiny).

The pipeline stages are Hydra apps; these tools take a handful of typed arguments,
parsed onto a dataclass so unknown keys and wrong types are one-line errors. Both kinds refuse
bad input the same way: ``InputError`` → one ``error: <path or key=value>: <reason>`` line, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


class InputError(ValueError):
    """Bad input to a command, caught before anything is written: ``<path or key=value>: <reason>``.
    The command prints it as one ``error:`` line and exits 2 (``fail``)."""


def run_config_file(run_dir: Path) -> Path:
    """A training run's resolved config (``RUN/config.yaml``); ``InputError`` for a dir that is no run."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise InputError(f"run_dir={run_dir}: no config.yaml (not a patentqa training run)")
    return path


def fail(error: Exception, code: int = 2) -> int:
    """Print ``error: <first line of the message>`` on stderr; the exit code to return."""
    print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
    return code


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
