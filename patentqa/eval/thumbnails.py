"""Page images for people reading answers: thumbnails made once from the page cache, and the size a prompt sent.

The data stage renders each page once, at the largest budget any prompt uses, into ``<cache>/pages/``
(``patentqa.data.pages``). A thumbnail is derived from that file once per (page file, thumbnail size) into
``<cache>/browse/<spec>/``, under the page's own cache-relative path, and shared by every browse, question, run
and W&B table. JPEG files are decoded at a reduced scale (Pillow's draft mode): ~10 ms a 2.35 MP page.

A prompt may send a page at a smaller budget than it was rendered at (with-context pages): ``sent_size`` gives
the size the engine resized it to, from the file's header alone, by the family's rule (``load_images``).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from patentqa.cpus import pool_size
from patentqa.tracking import atomic_write

POOL_FROM = 64  # fewer thumbnails than this are made in-process (a pool's start costs more)


@dataclass(frozen=True)
class ThumbSpec:
    """How thumbnails are made; every field is part of their cache key."""

    height: int = 200       # px (shown 120 px high: sharp at 1.7x); an A4 page: 141 × 200, ~5 KB. A 2.35 MP page
                            # (1820 px high) decodes at 1/8 scale for up to 227 px: 2x faster than at 1/4
    quality: int = 80       # JPEG quality

    def key(self) -> str:
        return f"thumb-h{self.height}-q{self.quality}"


def derived_path(cache_dir: Path, source: Path, key: str, suffix: str = ".jpg") -> Path:
    """Where an image derived from a cached page lives: ``<cache>/browse/KEY/`` + the page's path under
    ``<cache>/pages/`` (a file outside the page cache: a hash of its path)."""
    source = Path(source).resolve()
    try:
        relative = source.relative_to((Path(cache_dir) / "pages").resolve())
    except ValueError:
        relative = Path("other") / hashlib.sha1(str(source).encode()).hexdigest()[:16] / source.name
    return Path(cache_dir) / "browse" / key / relative.with_suffix(suffix)


def make_thumbnail(source: str, target: str, height: int, quality: int) -> str | None:
    """Write ``source``'s thumbnail (at most ``height`` px high) to ``target`` atomically; the error, or None."""
    from PIL import Image

    try:
        with Image.open(source) as image:
            width = max(1, round(image.width * height / max(image.height, 1)))
            image.draft("RGB", (width, height))  # JPEG: decode at 1/2, 1/4 or 1/8 scale, no smaller than asked
            image = image.convert("RGB")
            image.thumbnail((max(width, 1), height), Image.Resampling.BILINEAR)  # antialiased; LANCZOS: 2x the time
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality)
        atomic_write(target, buffer.getvalue(), durable=False)  # a cache: made again when missing or empty
    except (OSError, ValueError, SyntaxError) as error:  # PIL raises SyntaxError for some broken files
        return f"{type(error).__name__}: {error}"
    return None


@dataclass
class Thumbnails:
    """Thumbnail file of each page file asked for, the pages that had none (with the reason), and counts."""

    paths: dict[Path, Path]
    failed: dict[Path, str]
    made: int = 0
    cached: int = 0


def thumbnails(sources: Iterable[Path], cache_dir: Path, spec: ThumbSpec = ThumbSpec(), progress: bool = True,
               workers: int | None = None) -> Thumbnails:
    """The thumbnail of every page file in ``sources``: from the cache, else made (in a process pool when many)."""
    result = Thumbnails({}, {})
    todo: dict[Path, Path] = {}
    for source in dict.fromkeys(Path(s) for s in sources):
        target = derived_path(cache_dir, source, spec.key())
        if target.is_file() and target.stat().st_size > 0:  # empty: cut short by a power loss (no fsync)
            result.paths[source], result.cached = target, result.cached + 1
        elif not source.is_file():
            result.failed[source] = "missing from the page cache"
        else:
            todo[source] = target
    if not todo:
        return result
    jobs = [(str(s), str(t), spec.height, spec.quality) for s, t in todo.items()]
    with tqdm(total=len(jobs), unit="page", desc="thumbnails", disable=not progress) as bar:
        if len(jobs) < POOL_FROM:
            outcomes = []
            for job in jobs:
                outcomes.append(make_thumbnail(*job))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=pool_size(workers, len(jobs))) as pool:
                outcomes = []
                for error in pool.map(make_thumbnail, *zip(*jobs), chunksize=16):
                    outcomes.append(error)
                    bar.update()
    for (source, target), error in zip(todo.items(), outcomes):
        if error:
            result.failed[source] = error
        else:
            result.paths[source], result.made = target, result.made + 1
    return result


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header (nothing decoded)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def sent_size(size: tuple[int, int], max_pixels: int, min_pixels: int, factor: int,
              slicing: bool = False) -> tuple[int, int]:
    """(width, height) of a page file of ``size`` as an engine received it at a budget: what ``load_images``
    gives, without decoding: qwen-vl-utils' ``smart_resize`` (multiples of ``factor`` within the budget), or for
    a slicing family (MiniCPM-V) the file scaled down in proportion when it holds more than ``max_pixels``.
    The arithmetic is qwen-vl-utils' own, written out: importing it imports torch (10-30 s); tests hold the two
    equal (tests/test_browse.py)."""
    width, height = size
    if slicing:
        if not max_pixels or width * height <= max_pixels:
            return width, height
        ratio = width / height
        scaled = math.sqrt(max_pixels / ratio)
        return int(scaled * ratio), int(scaled)
    new_height = max(factor, round(height / factor) * factor)
    new_width = max(factor, round(width / factor) * factor)
    if new_height * new_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_height, new_width = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height, new_width = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return new_width, new_height


def place(source: Path, target: Path) -> Path:
    """``source`` at ``target`` as a hard link (no new bytes on the same filesystem), else a copy; atomic."""
    target = Path(target)
    if target.is_file() and os.path.samefile(source, target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)
    return target
