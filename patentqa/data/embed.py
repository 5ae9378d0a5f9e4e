"""GME embeddings (gme-Qwen2-VL) of page images and question texts, cached on disk.

The recipe follows the model repo's ``gme_inference.py``: every input is one chat turn

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n
    [<|vision_start|><|image_pad|><|vision_end|>]{text}<|im_end|>\\n<|im_start|>assistant\\n<|endoftext|>

(pages: the document instruction and no text; questions: the query instruction and the
text), and the embedding is the last-layer hidden state of the last *attended* token,
L2-normalised. The pad token is ``<|endoftext|>`` too, so "last non-pad" is read from the
attention mask, never from token ids. Like ``gme_inference.py`` (written for transformers
< 4.52, where ``Qwen2VLModel`` was the text decoder) the decoder gets plain sequential
positions, not M-RoPE grid positions: ``positions="mrope"`` switches to the 3-D positions
that transformers' Qwen2-VL forward (and ms-swift's ``qwen2_gme``) use.

Cache: ``cache_dir/<encoder key>/{pages,queries}/<xx>/<key>.npy``, one float32 vector per
file, written atomically. The encoder key hashes the model (config.json + weight file
names and sizes, or the hub id), dtype and position mode; a page key hashes the image
file's sha256, pixel budget and instruction; a query key the instruction and text.
The model is loaded only when something is missing from the cache, strictly (``load_gme``: a
missing, unexpected or misshapen key fails, naming it), and released again when that
computation ends, unless the caller keeps it for a while in a ``with embedder:`` block (the
data stage does, see data/build.py). Either way it holds the process's model slot
(patentqa/residency.py) only while loaded, so training and inference never start with GME resident.
"""
from __future__ import annotations

import hashlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from patentqa import residency
from patentqa.tracking import atomic_write, write_json_atomic

log = logging.getLogger(__name__)

IMAGE_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"
DEFAULT_INSTRUCTION = "You are a helpful assistant."  # gme_inference.py: documents / non-queries
POSITION_MODES = ("sequential", "mrope")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def gme_prompt(instruction: str, text: str = "", image: bool = False) -> str:
    """The one GME input string (exactly as ``gme_inference.py`` builds it)."""
    body = (IMAGE_TOKENS if image else "") + text
    return (f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{body}<|im_end|>\n"
            f"<|im_start|>assistant\n<|endoftext|>")


def model_key(model_path: str | Path) -> str:
    """Hash identifying a model: config.json + weight file names/sizes of a local dir, else the hub id."""
    path = Path(model_path)
    digest = hashlib.sha256()
    if path.is_dir():
        for name in ("config.json", "tiny.json"):
            if (path / name).is_file():
                digest.update(name.encode() + b"\0" + (path / name).read_bytes() + b"\0")
        for weight in sorted(p for p in path.iterdir() if p.name.endswith(_WEIGHT_SUFFIXES)):
            digest.update(f"{weight.name}:{weight.stat().st_size}\n".encode())
    else:
        digest.update(f"hub:{model_path}".encode())
    return digest.hexdigest()[:16]


def _sha(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()


def save_vector(path: Path, vector: np.ndarray) -> None:
    """Write one .npy atomically (temp file in the same folder + rename)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype=np.float32))
    atomic_write(path, buffer.getvalue())


def load_vector(path: Path) -> np.ndarray | None:
    """A cached vector, or None when absent or unreadable (it is then recomputed)."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


# GME's published checkpoints keep the LM head of the Qwen2-VL-Instruct they were tuned from (the
# transformers < 4.52 ``Qwen2VLForConditionalGeneration`` layout, see patentqa/tiny/gme.py); an
# embedding never reads it. Every other key must match the model exactly.
GME_UNUSED_KEYS = frozenset({"lm_head.weight"})


class GmeLoadError(RuntimeError):
    """A GME checkpoint whose weights do not match the model (missing, unexpected or misshapen keys)."""


def _listed(keys: Any, limit: int = 8) -> str:
    keys = sorted(str(k) for k in keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def loading_problems(info: dict[str, Any], allowed_unexpected: frozenset[str] = GME_UNUSED_KEYS) -> list[str]:
    """What ``from_pretrained(..., output_loading_info=True)`` reports wrong, one line per kind (empty: none).

    Missing keys would be randomly initialised (random retrieval that nothing downstream notices);
    unexpected keys mean the checkpoint is another model or another key layout.
    """
    missing = set(info.get("missing_keys") or [])
    unexpected = set(info.get("unexpected_keys") or []) - allowed_unexpected
    mismatched = [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or []]
    problems = []
    if missing:
        problems.append(f"missing keys (would be random): {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys (not used by the model): {_listed(unexpected)}")
    if mismatched:
        problems.append(f"keys of another shape: {_listed(mismatched)}")
    problems += [str(message) for message in info.get("error_msgs") or []]
    return problems


def load_gme(model_path: str, dtype: str, device: str) -> Any:
    """``Qwen2VLModel`` (no LM head) of a GME checkpoint on ``device``, in eval mode; raises
    ``GmeLoadError`` naming the keys when the checkpoint's weights do not match the model exactly."""
    import torch
    from transformers import Qwen2VLModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the loading info is checked below instead of logged
    try:
        # Qwen2VLModel loads GME's layout (visual.*, model.*) and transformers 5's alike.
        model, info = Qwen2VLModel.from_pretrained(model_path, dtype=getattr(torch, dtype), device_map=device,
                                                   output_loading_info=True)  # straight onto the device
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = loading_problems(info)
    if problems:
        del model
        raise GmeLoadError(f"GME checkpoint {model_path} does not match Qwen2VLModel: " + "; ".join(problems))
    return model.eval()


class GmeEmbedder:
    """Page and query embeddings from a gme-Qwen2-VL checkpoint, batched and cached."""

    def __init__(self, model_path: str | Path, cache_dir: str | Path, *, min_pixels: int, max_pixels: int,
                 query_instruction: str, document_instruction: str = DEFAULT_INSTRUCTION, batch_size: int = 8,
                 device: str | None = None, dtype: str | None = None, positions: str = "sequential",
                 progress: bool = True, hub: str = "huggingface") -> None:
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
        self.model_path = str(model_path)
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.query_instruction, self.document_instruction = query_instruction, document_instruction
        self.batch_size = max(1, int(batch_size))
        self.positions, self.progress = positions, progress
        self.hub = hub  # where a hub id is fetched from when the model is first needed (patentqa/hub.py)
        self.device = _default_device(device, self.model_path, hub)
        self.dtype = dtype or ("bfloat16" if self.device.startswith("cuda") else "float32")
        self.key = _sha(model_key(model_path), self.dtype, positions)[:16]
        self.cache_dir = Path(cache_dir) / self.key
        self.forward_calls = 0          # model forward passes (batches) run by this instance
        self.computed = 0               # vectors computed (not read from the cache)
        self.last_rate: float | None = None  # pages/s of the last page batch run
        self._model: Any = None
        self._processor: Any = None
        self._held: residency.Hold | None = None  # the process's model slot while the model is loaded
        self._sessions = 0  # open `with` blocks: the model stays loaded between calls
        self._file_sha: dict[tuple[str, int, int], str] = {}

    # ---- public API -------------------------------------------------------------------------
    def embed_pages(self, paths: list[Path]) -> np.ndarray:
        """(len(paths), dim) unit vectors of page images (document instruction, no text)."""
        keys = [_sha("page", self._image_sha(Path(p)), self.min_pixels, self.max_pixels, self.document_instruction)
                for p in paths]
        return self._embed(keys, [Path(p) for p in paths], "pages")

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) unit vectors of texts (query instruction)."""
        keys = [_sha("query", self.query_instruction, t) for t in texts]
        return self._embed(keys, list(texts), "queries")

    __call__ = embed_queries  # a text embedder for style examples

    # ---- cache --------------------------------------------------------------------------------
    def _path(self, kind: str, key: str) -> Path:
        return self.cache_dir / kind / key[:2] / f"{key}.npy"

    def _image_sha(self, path: Path) -> str:
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if memo not in self._file_sha:
            self._file_sha[memo] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._file_sha[memo]

    def _embed(self, keys: list[str], items: list[Any], kind: str) -> np.ndarray:
        found: dict[str, np.ndarray] = {}
        todo: dict[str, Any] = {}
        for key, item in zip(keys, items):
            if key in found or key in todo:
                continue
            vector = load_vector(self._path(kind, key))
            if vector is None:
                todo[key] = item
            else:
                found[key] = vector
        if todo:
            found.update(self._compute(todo, kind))
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)

    def _compute(self, todo: dict[str, Any], kind: str) -> dict[str, np.ndarray]:
        self._load()
        try:
            return self._compute_loaded(todo, kind)
        finally:
            if not self._sessions:  # outside a `with` block the model lives for one computation
                self.close()

    def _compute_loaded(self, todo: dict[str, Any], kind: str) -> dict[str, np.ndarray]:
        if not self._meta_written():
            self._write_meta()
        keys = list(todo)
        out: dict[str, np.ndarray] = {}
        started = time.perf_counter()
        unit = "page" if kind == "pages" else "query"
        with tqdm(total=len(keys), unit=unit, desc=f"gme {kind}", disable=not self.progress) as bar:
            for start in range(0, len(keys), self.batch_size):
                batch = keys[start:start + self.batch_size]
                if kind == "pages":
                    vectors = self._forward([(self.document_instruction, "", todo[k]) for k in batch])
                else:
                    vectors = self._forward([(self.query_instruction, todo[k], None) for k in batch])
                for key, vector in zip(batch, vectors):
                    save_vector(self._path(kind, key), vector)
                    out[key] = vector
                bar.update(len(batch))
        seconds = time.perf_counter() - started
        self.computed += len(keys)
        if kind == "pages":
            self.last_rate = len(keys) / seconds if seconds > 0 else None
        log.info("gme: embedded %d %s in %.1fs (%.2f/s)", len(keys), kind, seconds, len(keys) / max(seconds, 1e-9))
        return out

    def _meta_written(self) -> bool:
        return (self.cache_dir / "encoder.json").is_file()

    def _write_meta(self) -> None:
        """A human-readable note of what the encoder key stands for."""
        meta = {"model_path": self.model_path, "model_key": model_key(self.model_path), "dtype": self.dtype,
                "positions": self.positions}
        write_json_atomic(self.cache_dir / "encoder.json", meta)

    # ---- model --------------------------------------------------------------------------------
    def __enter__(self) -> GmeEmbedder:
        """Keep the model loaded across calls until the block ends (outside one: loaded per computation)."""
        self._sessions += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        self._sessions -= 1
        if self._sessions <= 0:
            self._sessions = 0
            self.close()

    def close(self) -> None:
        """Drop the model and release its residency hold; the next cache miss loads it again."""
        self._model = self._processor = None
        if self._held is not None:
            self._held.release()  # gc.collect() + torch.cuda.empty_cache()
            self._held = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoProcessor

        from patentqa.hub import resolve_model

        started = time.perf_counter()
        path = resolve_model(self.model_path, self.hub)  # a hub id: its local snapshot (patentqa/hub.py)
        with residency.loading("gme", path) as held:  # no other model may be alive
            model = load_gme(path, self.dtype, self.device)
            processor = AutoProcessor.from_pretrained(path)  # pixel budget: per call (_forward)
        self._held = held.bind(self)
        self._model = model
        self._processor = processor
        self._processor.tokenizer.padding_side = "right"  # as gme_inference.py; pooling reads the mask anyway
        log.info("gme: loaded %s on %s (%s) in %.1fs", self.model_path, self.device, self.dtype,
                 time.perf_counter() - started)

    def _forward(self, batch: list[tuple[str, str, Path | None]]) -> list[np.ndarray]:
        """Embed one batch of (instruction, text, image path or None); all with or all without image."""
        import torch
        from PIL import Image

        with_image = [image is not None for _, _, image in batch]
        if any(with_image) and not all(with_image):
            raise ValueError("a batch mixes inputs with and without images")
        prompts = [gme_prompt(instr, text, image is not None) for instr, text, image in batch]
        images = [Image.open(image).convert("RGB") for _, _, image in batch if image is not None] or None
        inputs = self._processor(text=prompts, images=images, padding=True, return_tensors="pt",
                                 images_kwargs={"size": {"shortest_edge": self.min_pixels,
                                                         "longest_edge": self.max_pixels}})
        model = self._model
        ids = inputs["input_ids"].to(self.device)
        mask = inputs["attention_mask"].to(self.device)
        with torch.inference_mode():
            if self.positions == "mrope":
                extra = {k: inputs[k].to(self.device) for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids")
                         if k in inputs}
                model.rope_deltas = None
                hidden = model(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
            else:
                embeds = model.get_input_embeddings()(ids)
                if images is not None:
                    pixels = inputs["pixel_values"].to(self.device, model.visual.dtype)
                    grid = inputs["image_grid_thw"].to(self.device)
                    features = torch.cat(model.get_image_features(pixels, grid, return_dict=True).pooler_output)
                    image_mask = ids == model.config.image_token_id
                    if int(image_mask.sum()) != features.shape[0]:
                        raise RuntimeError(f"{int(image_mask.sum())} image tokens but {features.shape[0]} features")
                    embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), features.to(embeds.dtype))
                # sequential positions of the attended tokens (= arange for right padding, as GME)
                position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
                hidden = model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                              position_ids=position_ids).last_hidden_state
            last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # last attended
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        self.forward_calls += 1
        return list(pooled.cpu().numpy())


def _default_device(device: str | None = None, model_path: str = "", hub: str = "huggingface") -> str:
    """``device`` as given (cpu, cuda:1); None or auto: cuda when a GPU works, else cpu, but a GME that is not
    a tiny test model stops there instead (``patentqa.device.require_gpu``: device=cpu means the CPU on purpose)."""
    if device not in (None, "auto"):
        return str(device)
    from patentqa.device import gpu_driver_present, require_gpu

    require_gpu(model_path or "the GME model", "auto", stage="GME embedder", hub=hub)
    if not gpu_driver_present():  # torch would say no CUDA: spare its 2-3 s import when every vector is cached (issue 21.5)
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
