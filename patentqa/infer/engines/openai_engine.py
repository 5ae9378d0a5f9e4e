"""Client engine for any OpenAI-compatible chat server (``vllm serve``, ``swift deploy``).

Each prompt becomes one ``POST {base_url}/chat/completions`` with a single user message whose
content is ``to_openai_content(prompt)`` (text parts and images as base64 PNG data URLs,
already at their training budget). Requests run in a thread pool of ``infer.concurrency``;
timeouts, connection errors, 5xx, 408 and 429 are retried ``infer.max_retries`` times with
exponential backoff (``retry_backoff_s * 2**attempt``, capped, with jitter); other 4xx fail at
once. The API key comes from ``OPENAI_API_KEY`` only (default ``EMPTY`` for local servers) and
is never logged nor put into an exception.

Which model answers: the request's ``model`` field. ``adapter=None`` uses ``infer.model_name``,
or when that is null the first id of ``GET /v1/models`` (the base model: swift deploy and
vllm serve both list it first). A LoRA checkpoint is served under a name:

    swift deploy --model BASE --adapters checkpoint-4=/runs/.../checkpoint-4 ...
    vllm serve BASE --enable-lora --lora-modules checkpoint-4=/runs/.../checkpoint-4

and ``generate(..., adapter=A)`` sends as ``model``: ``infer.adapter_names[A]`` when given; else
``A`` itself when the server lists it as an id; else the listed model whose ``root`` is A's
path (vllm serve reports it); else A's directory name (``checkpoint-4`` above) when listed.
Otherwise it raises, naming the served models.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patentqa.config import cfg_get
from patentqa.data.prompts import Prompt, to_openai_content
from patentqa.models import chat_template_kwargs, family_of
from patentqa.infer.engine import Reply, Sampling, image_factor

log = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUS = frozenset({408, 429})  # client-side codes that are worth retrying; all 5xx are, too
MAX_BACKOFF_S = 30.0


class ServerError(RuntimeError):
    """A request failed for good (after retries, or with a non-retryable status)."""


def api_key() -> str:
    """The API key: ``OPENAI_API_KEY`` or ``EMPTY`` (what local servers without a key accept)."""
    return os.environ.get(API_KEY_ENV) or "EMPTY"


def chat_request(prompt: Prompt, model: str, sampling: Sampling, factor: int = 28,
                 extra_body: dict[str, Any] | None = None,
                 template_kwargs: dict[str, Any] | None = None,
                 processor_kwargs: dict[str, Any] | None = None, resize: bool = True) -> dict[str, Any]:
    """The JSON body of one chat completion request (``template_kwargs``: vLLM's ``chat_template_kwargs``;
    ``processor_kwargs``: vLLM's per-request ``mm_processor_kwargs``, a slicing family's slice settings)."""
    body: dict[str, Any] = {"model": model,
                            "messages": [{"role": "user", "content": to_openai_content(prompt, factor, resize)}],
                            "max_tokens": int(sampling.max_new_tokens), "temperature": float(sampling.temperature)}
    if template_kwargs:
        body["chat_template_kwargs"] = dict(template_kwargs)
    if processor_kwargs:
        body["mm_processor_kwargs"] = dict(processor_kwargs)
    body.update(extra_body or {})
    return body


@dataclass
class OpenAIEngine:
    """Bounded-concurrency chat client with retries (see module doc)."""

    base_url: str
    model_name: str | None = None
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 4
    retry_backoff_s: float = 1.0
    factor: int = 28
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # the model's chat-template arguments
    processor_kwargs: dict[str, Any] = field(default_factory=dict)  # a slicing family's slice settings, per request
    resize: bool = True  # images resized to their budgets before sending (False: a slicing family's, as they are)
    adapter_names: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)
    name: str = "openai"
    requests_sent: int = 0  # HTTP attempts, retries included
    _client: Any = None
    _lock: Any = field(default_factory=threading.Lock)
    _models: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        import httpx

        self.base_url = self.base_url.rstrip("/")
        limits = httpx.Limits(max_connections=max(1, self.concurrency), max_keepalive_connections=max(1, self.concurrency))
        self._client = httpx.Client(timeout=self.timeout_s, limits=limits,
                                    headers={"Authorization": f"Bearer {api_key()}"})

    @classmethod
    def from_config(cls, infer_cfg: Any, model_cfg: Any) -> OpenAIEngine:
        from omegaconf import OmegaConf

        def plain(value: Any) -> dict[str, Any]:
            if value is None:
                return {}
            return dict(OmegaConf.to_container(value, resolve=True)) if OmegaConf.is_config(value) else dict(value)

        family = family_of(model_cfg)
        return cls(base_url=str(cfg_get(infer_cfg, "base_url", "http://127.0.0.1:8000/v1")),
                   model_name=cfg_get(infer_cfg, "model_name"),
                   concurrency=int(cfg_get(infer_cfg, "concurrency", 8)),
                   timeout_s=float(cfg_get(infer_cfg, "timeout_s", 120)),
                   max_retries=int(cfg_get(infer_cfg, "max_retries", 4)),
                   retry_backoff_s=float(cfg_get(infer_cfg, "retry_backoff_s", 1.0)),
                   factor=image_factor(model_cfg),
                   template_kwargs=chat_template_kwargs(model_cfg),
                   processor_kwargs=(family.image_kwargs(cfg_get(model_cfg, "slices", None)) if family.slicing
                                     else {}),  # a Qwen server is started with do_resize=False (README)
                   resize=not family.slicing,
                   adapter_names={str(k): str(v) for k, v in plain(cfg_get(infer_cfg, "adapter_names")).items()},
                   extra_body=plain(cfg_get(infer_cfg, "extra_body")))

    # --- HTTP with retries ----------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        key = api_key()
        return text.replace(key, "***") if key and key != "EMPTY" else text

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """JSON response of ``method base_url+path``, retrying transient failures with backoff."""
        import httpx

        url = self.base_url + path
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(MAX_BACKOFF_S, self.retry_backoff_s * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            with self._lock:
                self.requests_sent += 1
            try:
                response = self._client.request(method, url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as error:  # timeouts, refused/reset connections
                last = f"{type(error).__name__}: {error}"
            else:
                status = response.status_code
                if status < 400:
                    return response.json()
                last = f"HTTP {status}: {response.text[:500]}"
                if status < 500 and status not in RETRY_STATUS:
                    raise ServerError(self._scrub(f"{method} {url} failed: {last}"))
            log.warning("%s %s attempt %d/%d failed: %s", method, url, attempt + 1, self.max_retries + 1,
                        self._scrub(last))
        raise ServerError(self._scrub(f"{method} {url} failed after {self.max_retries + 1} attempts: {last}"))

    # --- model names ----------------------------------------------------------------------------

    def served_models(self) -> list[dict[str, Any]]:
        """``GET /models`` entries (``id``, and ``root`` on vllm serve), fetched once."""
        if self._models is None:
            self._models = list(self._request("GET", "/models").get("data", []))
        return self._models

    def model_for(self, adapter: str | None) -> str:
        """The ``model`` field for the base model (None) or a LoRA checkpoint (see module doc)."""
        if adapter is None:
            if self.model_name:
                return str(self.model_name)
            models = self.served_models()
            if not models:
                raise ServerError(f"{self.base_url}/models lists no model; set infer.model_name")
            return str(models[0]["id"])
        if adapter in self.adapter_names:
            return self.adapter_names[adapter]
        models = self.served_models()
        ids = [str(m.get("id")) for m in models]
        if adapter in ids:
            return adapter
        resolved = str(Path(adapter).resolve())
        for m in models:
            if m.get("root") and str(Path(str(m["root"])).resolve()) == resolved:
                return str(m["id"])
        if Path(adapter).name in ids:
            return Path(adapter).name
        raise ServerError(f"no served model for adapter {adapter}: the server lists {ids}; serve it as "
                          f"{Path(adapter).name}={adapter} (swift deploy --adapters / vllm serve --lora-modules) "
                          "or map it in infer.adapter_names")

    # --- engine ---------------------------------------------------------------------------------

    def _answer(self, prompt: Prompt, model: str, sampling: Sampling) -> str:
        response = self._request("POST", "/chat/completions",
                                 chat_request(prompt, model, sampling, self.factor, self.extra_body,
                                              self.template_kwargs, self.processor_kwargs, self.resize))
        try:
            choice = response["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise ServerError(self._scrub(f"unexpected chat completion response: {str(response)[:500]}")) from error
        reason = choice.get("finish_reason")  # "length": cut at max_tokens; absent on some servers
        return Reply(content or "", truncated=None if reason is None else reason == "length")

    def generate(self, prompts: list[Prompt], sampling: Sampling, adapter: str | None = None) -> list[str]:
        """One answer per prompt, in order; at most ``concurrency`` requests in flight."""
        if not prompts:
            return []
        model = self.model_for(adapter)
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts))))
        try:
            futures = [pool.submit(self._answer, prompt, model, sampling) for prompt in prompts]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a failure cancels what has not started

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
