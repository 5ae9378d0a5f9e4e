"""How every command refuses bad input, and the arguments of the small stand-alone tools.

The pipeline stages are Hydra apps. The tools (synth, ocr, check, score, report, merge, parity,
gpucheck) take a handful of typed ``key=value`` arguments: their dataclass goes into Hydra's config
store and the command line is composed onto it with Hydra's own override grammar, so they read
exactly like a stage's overrides (``runs=[A,B]``, ``baseline=null``) without a config tree, output
directory or logging set-up. What Hydra does not give is the shape of a refusal, the same for both
kinds: ``InputError`` → one ``error: <path or key=value>: <reason>`` line, exit 2.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

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


def _compose(name: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside a Hydra app or a test that composed: its store is ours
        return compose(config_name=name, overrides=overrides)
    with initialize(version_base="1.3", config_path=None):
        return compose(config_name=name, overrides=overrides)


def _first_lines(error: BaseException) -> str:
    """The first line of an error and of the error that caused it (Hydra wraps OmegaConf's)."""
    lines = [str(e).splitlines()[0].rstrip(".") for e in (error, error.__cause__) if e is not None and str(e).strip()]
    return ": ".join(dict.fromkeys(lines)) or type(error).__name__


def parse_args(schema: type[T], argv: list[str] | None = None) -> T:
    """``key=value`` arguments in Hydra's override grammar onto dataclass ``schema`` (a structured config in
    Hydra's store, composed as a stage's config is: unknown keys and wrong types are refused); exit 2 with a
    one-line message. ``+key``/``~key`` (adding or deleting keys) have no place in a fixed schema."""
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException, OverrideParseException

    argv = sys.argv[1:] if argv is None else list(argv)
    fields = list(schema.__dataclass_fields__)  # type: ignore[attr-defined]
    wants_help = any(arg in ("-h", "--help") for arg in argv)
    bad = [arg for arg in argv if ("=" not in arg or arg.startswith(("+", "~"))) and arg not in ("-h", "--help")]
    if bad or wants_help:
        usage = " ".join(f"{name}=..." for name in fields)
        print(f"usage: {usage}" + (f"\nnot key=value: {' '.join(bad)}" if bad else ""), file=sys.stderr)
        raise SystemExit(2 if bad else 0)
    name = f"patentqa_cli_{schema.__module__.replace('.', '_')}_{schema.__qualname__}"
    ConfigStore.instance().store(name=name, node=schema)
    try:
        composed = _compose(name, argv)
        missing = sorted(OmegaConf.missing_keys(composed))
        if missing:
            raise ValueError(f"missing required argument(s): {', '.join(m + '=...' for m in missing)}")
        return OmegaConf.to_object(composed)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        hint = " (a value with characters the grammar does not take bare is quoted: key='...')" \
            if isinstance(error, OverrideParseException) else ""
        print(f"error: {_first_lines(error)}{hint}\nvalid keys: {', '.join(fields)}", file=sys.stderr)
        raise SystemExit(2) from None
