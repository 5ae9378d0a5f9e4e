"""Rendering a report: document blocks → Markdown and self-contained HTML (Jinja2), numbers → text.

A document is a list of blocks, built by the report's and the study's sections:

    ("h", level, text) | ("p", text) | ("ul", items) | ("table", header, rows) | ("img", file, alt, png)

Text may hold ``**bold**``, ```code``` and ``[a link](to/a/file)`` (Markdown's own); the HTML template turns
them into tags after escaping. Plots are PNG bytes: beside the Markdown as files, inside the HTML as data URIs.
"""
from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from patentqa.tracking import atomic_write

Block = tuple
TEMPLATES = Path(__file__).with_name("templates")


# ---------------------------------------------------------------- numbers as text

def fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def fmt_ci(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "–"
    return f"{stats['mean']:.3f} [{stats['ci_low']:.3f}, {stats['ci_high']:.3f}]"


def fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# ---------------------------------------------------------------- plots

def png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def ascii_label(text: str, fallback: str) -> str:
    """Plot labels in ASCII (no CJK font is assumed): non-ASCII labels become ``fallback``."""
    return text if text.isascii() else fallback


# ---------------------------------------------------------------- Markdown

def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if block[0] == "h":
            out.append("#" * block[1] + " " + block[2])
        elif block[0] == "p":
            out.append(block[1])
        elif block[0] == "ul":
            out.append("\n".join(f"- {item}" for item in block[1]))
        elif block[0] == "img":
            out.append(f"![{block[2]}]({block[1]})")
        elif block[0] == "table":
            header, rows = block[1], block[2]
            lines = ["| " + " | ".join(_md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


# ---------------------------------------------------------------- HTML (Jinja2)

def _inline(text: Any) -> Markup:
    """Escaped text with ``**bold**``, ```code```, ``[links](relative/path)`` and line breaks as tags."""
    text = html.escape(str(text)).replace("\n", "<br>")
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\[([^\]]+)\]\(([\w./-]+)\)", r'<a href="\2">\1</a>', text)  # a file beside the page
    return Markup(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["inline"] = _inline
    env.filters["b64"] = lambda data: base64.b64encode(data).decode("ascii")
    return env


_ENV = _environment()


def render_template(name: str, **context: Any) -> str:
    """A template of ``templates/`` rendered with ``context`` (autoescaped; undefined names fail)."""
    return _ENV.get_template(name).render(**context)


def _named(block: Block) -> dict[str, Any]:
    kind = block[0]
    fields = {"h": ("level", "text"), "p": ("text",), "ul": ("entries",), "table": ("header", "rows"),
              "img": ("file", "alt", "png")}[kind]
    return {"kind": kind, **dict(zip(fields, block[1:]))}


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained HTML page: inline CSS, plots as data URIs, no script, no outside request."""
    return _ENV.get_template("document.html.j2").render(title=title, blocks=[_named(b) for b in blocks])


def write_document(out: Path, stem: str, blocks: list[Block], title: str) -> Path:
    """``out/STEM.md``, ``out/STEM.html`` and each plot's PNG, atomically; returns the Markdown path."""
    out = Path(out)
    for block in blocks:
        if block[0] == "img":
            atomic_write(out / block[1], block[3])
    atomic_write(out / f"{stem}.md", to_markdown(blocks).encode("utf-8"))
    atomic_write(out / f"{stem}.html", to_html(blocks, title).encode("utf-8"))
    return out / f"{stem}.md"
