"""The three engines, without models or GPUs: same prompt text, budgeted images, vLLM arguments,
and the OpenAI client's retries against a stub HTTP server on 127.0.0.1.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from omegaconf import OmegaConf

from patentqa.data.prompts import (IMAGE_TAG, PageImage, Prompt, PromptConfig, build_prompt, classifier_prompt,
                                   to_openai_content)
from patentqa.infer.engine import Sampling
from patentqa.infer.engines import make_engine
from patentqa.infer.engines.openai_engine import OpenAIEngine, ServerError, chat_request
from patentqa.infer.engines.vllm_engine import (VLLM_MISSING, build_requests, cpu_env, llm_kwargs, lora_rank,
                                                round_lora_rank, tensor_parallel_size)
from patentqa.infer.inputs import prompt_text

REPO = Path(__file__).resolve().parents[1]
CONFIG = PromptConfig(name="seed_b", max_pixels={"with_context": 50176, "figure_only": 100352})
LABELLED = PromptConfig(name="page_labels", max_pixels={"with_context": 25088, "figure_only": 50176})
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
HEADER = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
FOOTER = "<|im_end|>\n<|im_start|>assistant\n"
SECRET = "sk-test-0123456789-secret"


# --- prompts over drawn pages of different shapes ----------------------------------------------

@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    from PIL import Image, ImageDraw

    root = tmp_path_factory.mktemp("engine_pages")
    sizes = {1: (620, 877), 2: (877, 620), 3: (400, 1000), 4: (300, 300)}
    out = {}
    for page, size in sizes.items():
        image = Image.new("RGB", size, "white")
        ImageDraw.Draw(image).rectangle([10 * page, 20, size[0] // 2, size[1] // 2], outline="black", width=3)
        image.save(root / f"page{page}.png")
        out[page] = str(root / f"page{page}.png")
    return out


@pytest.fixture(scope="module")
def prompts(pages: dict[int, str]) -> list[Prompt]:
    def page(n: int) -> PageImage:
        return PageImage(n, pages[n])

    return [
        build_prompt(CONFIG, "在文件中第2页的示意图中，编号为3的部件是什么？", "with_context", page(2), [page(1), page(3)]),
        build_prompt(CONFIG, "在文件中第3页的示意图中，部件4位于部件2的什么位置？", "figure_only", page(3), []),
        build_prompt(CONFIG, "该专利要解决的技术问题是什么？", "document", None, [page(1), page(4)]),
        build_prompt(LABELLED, "在文件中第1页的示意图中，编号为5的部件是什么？", "with_context", page(1), [page(2)]),
        classifier_prompt("在文件中第3页的示意图中，部件4位于部件2的什么位置？"),
    ]


@pytest.fixture(scope="module")
def processor(tiny_vl: Path) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_vl)


def _budgeted_size(path: str, max_pixels: int, min_pixels: int, factor: int = 28) -> tuple[int, int]:
    """(width, height) an image is shown at: qwen-vl-utils' smart_resize of the file's size."""
    from PIL import Image
    from qwen_vl_utils import smart_resize

    with Image.open(path) as image:
        width, height = image.size
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return w, h


def _decode_data_url(url: str) -> Any:
    from PIL import Image

    header, data = url.split(",", 1)
    assert header == "data:image/png;base64"  # lossless: the server sees the offline engines' pixels
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_the_openai_engine_sends_pages_at_the_familys_factor(prompts: list[Prompt]) -> None:
    """Qwen3-VL's 32 px a token reaches the request (a real `vllm serve` runs for Qwen2.5-VL in test_vllm.py; the
    family is otherwise only this number): each image at the budget smart_resize gives for that factor."""
    for prompt in prompts:
        urls = [part["image_url"]["url"] for part in to_openai_content(prompt, 32) if part["type"] == "image_url"]
        sizes = [_decode_data_url(url).size for url in urls]
        expected = [_budgeted_size(image.path, image.max_pixels, image.min_pixels, 32) for image in prompt.images]
        assert sizes == expected and all(w % 32 == 0 and h % 32 == 0 for w, h in sizes)
    assert any(_decode_data_url(u).size != _decode_data_url(v).size for p in prompts
               for u, v in zip(*[[c["image_url"]["url"] for c in to_openai_content(p, f) if c["type"] == "image_url"]
                                 for f in (28, 32)]))  # the factor changes what is sent


def test_engines_render_the_same_prompt_text(processor: Any, prompts: list[Prompt]) -> None:
    requests = build_requests(prompts, processor)
    for prompt, request in zip(prompts, requests):
        text = prompt_text(processor, prompt)  # transformers engine
        assert request["prompt"] == text  # vLLM engine
        assert text == HEADER + prompt.text(VISION) + FOOTER  # the structured prompt, in the chat template
        content = to_openai_content(prompt)  # OpenAI engine
        rejoined = "".join(part["text"] if part["type"] == "text" else IMAGE_TAG for part in content)
        assert rejoined == prompt.text(IMAGE_TAG)
        assert [part["type"] for part in content] == ["text" if isinstance(p, str) else "image_url" for p in prompt.parts]


def test_images_are_sent_at_their_budget(processor: Any, prompts: list[Prompt]) -> None:
    for prompt, request in zip(prompts, build_requests(prompts, processor)):
        expected = [_budgeted_size(image.path, image.max_pixels, image.min_pixels) for image in prompt.images]
        if not expected:
            assert "multi_modal_data" not in request
            continue
        vllm_sizes = [image.size for image in request["multi_modal_data"]["image"]]
        assert vllm_sizes == expected
        for (w, h), image in zip(vllm_sizes, prompt.images):
            assert w % 28 == 0 and h % 28 == 0 and w * h <= image.max_pixels
        urls = [part["image_url"]["url"] for part in to_openai_content(prompt) if part["type"] == "image_url"]
        assert [_decode_data_url(url).size for url in urls] == expected
        sent = [np.asarray(_decode_data_url(url).convert("RGB")) for url in urls]
        assert all((a == np.asarray(b.convert("RGB"))).all()
                   for a, b in zip(sent, request["multi_modal_data"]["image"]))
    # the budgets really shrink the pages (the with_context budget is smaller than the page)
    assert build_requests(prompts[:1], processor)[0]["multi_modal_data"]["image"][0].size != (877, 620)


# --- vLLM arguments ------------------------------------------------------------------------------

def test_llm_kwargs_for_the_vllm_config() -> None:
    infer_cfg = OmegaConf.load(REPO / "conf/infer/vllm.yaml")
    model_cfg = OmegaConf.load(REPO / "conf/model/qwen2_5_vl_32b.yaml")
    kwargs = llm_kwargs(infer_cfg, model_cfg, max_lora_rank=8)  # an r8 adapter served (served_lora_rank)
    assert set(kwargs) == {"model", "dtype", "tensor_parallel_size", "max_num_seqs", "max_model_len",
                           "enable_prefix_caching", "limit_mm_per_prompt", "mm_processor_kwargs", "enable_lora",
                           "max_lora_rank", "max_loras"}  # gpu_memory_utilization null: vLLM's default
    assert kwargs["model"] == "Qwen/Qwen2.5-VL-32B-Instruct" and kwargs["dtype"] == "bfloat16"
    assert kwargs["tensor_parallel_size"] == tensor_parallel_size("auto")  # every visible GPU, 1 on a CPU
    assert kwargs["max_num_seqs"] == 64 and kwargs["max_model_len"] == 32768
    assert kwargs["enable_prefix_caching"] is True and kwargs["enable_lora"] is True
    assert kwargs["limit_mm_per_prompt"] == {"image": 4}
    assert kwargs["mm_processor_kwargs"] == {"do_resize": False}
    assert kwargs["max_lora_rank"] == 8 and kwargs["max_loras"] == 1
    assert llm_kwargs(infer_cfg, model_cfg, max_lora_rank=12)["max_lora_rank"] == 16
    infer_cfg.gpu_memory_utilization = 0.85
    assert llm_kwargs(infer_cfg, model_cfg, 8)["gpu_memory_utilization"] == 0.85
    infer_cfg.kv_cache_memory_bytes = 2 ** 30  # a fixed KV budget (gpu-check's parity row)
    assert llm_kwargs(infer_cfg, model_cfg, 8)["kv_cache_memory_bytes"] == 2 ** 30
    infer_cfg.tensor_parallel_size = 4
    assert llm_kwargs(infer_cfg, model_cfg, 8)["tensor_parallel_size"] == 4
    assert llm_kwargs(infer_cfg, model_cfg, 8, model="/models/local")["model"] == "/models/local"


def test_the_model_runs_eagerly_on_a_cpu_and_compiled_on_a_gpu() -> None:
    """enforce_eager: auto is eager on vLLM's CPU platform (its compile costs ~30 s a start there) and vLLM's own
    default on a GPU (compiled, CUDA graphs: not passed at all); a set value holds on both."""
    infer_cfg = OmegaConf.load(REPO / "conf/infer/vllm.yaml")
    model_cfg = OmegaConf.load(REPO / "conf/model/qwen2_5_vl_32b.yaml")
    assert infer_cfg.enforce_eager == "auto"
    assert llm_kwargs(infer_cfg, model_cfg, 8, cpu=True)["enforce_eager"] is True
    assert "enforce_eager" not in llm_kwargs(infer_cfg, model_cfg, 8, cpu=False)
    for value in (True, False):
        infer_cfg.enforce_eager = value
        assert [llm_kwargs(infer_cfg, model_cfg, 8, cpu=cpu)["enforce_eager"] for cpu in (True, False)] == [value] * 2


def test_cpu_env_binds_one_core_set_per_tensor_parallel_worker() -> None:
    assert cpu_env(1, 2, environ={}) == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert cpu_env(2, 4, environ={}, cpus=[0, 1]) == {"VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    assert cpu_env(2, 2, environ={}, cpus=list(range(8)))["VLLM_CPU_OMP_THREADS_BIND"] == "0,1,2,3|4,5,6,7"
    given = {"VLLM_CPU_KVCACHE_SPACE": "8", "VLLM_CPU_OMP_THREADS_BIND": "0-3|4-7"}
    assert cpu_env(2, 2, environ=given) == {}  # what the caller set wins
    with pytest.raises(ValueError, match="needs at least 4 CPUs"):
        cpu_env(4, 2, environ={}, cpus=[0, 1])


def _adapter(tmp_path: Path, name: str, config: dict[str, Any]) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def test_lora_rank_rounds_up_to_vllm_ranks(tmp_path: Path) -> None:
    assert [round_lora_rank(r) for r in (1, 2, 8, 9, 16, 33, 256, 257, 320, 321, 512)] == \
        [1, 8, 8, 16, 16, 64, 256, 320, 320, 512, 512]
    with pytest.raises(ValueError, match="exceeds"):
        round_lora_rank(513)
    assert lora_rank(_adapter(tmp_path, "r8", {"r": 8, "lora_alpha": 32})) == 8
    assert lora_rank(_adapter(tmp_path, "r12", {"r": 12})) == 16
    assert lora_rank(_adapter(tmp_path, "pattern", {"r": 8, "rank_pattern": {"q_proj": 40}})) == 64
    with pytest.raises(FileNotFoundError):
        lora_rank(tmp_path / "missing")


def test_transformers_text_is_what_vllms_detokenizer_leaves(processor: Any) -> None:
    """Same tokens, same text: the transformers engine renders generated ids as vLLM's incremental detokenizer
    (tokenizers' DecodeStream after the prompt, as vllm/v1/engine/detokenizer.py drives it) ends up with, on the
    tiny tokenizer's byte-level pieces: a character cut at the end, a stray byte, and the tiny Qwen3-VL's
    '此不再赯' + stray-byte pair repeated (vLLM stops emitting after '封'), plus random id runs."""
    import random

    from tokenizers.decoders import DecodeStream

    from patentqa.infer.engines.transformers_engine import _complete

    tokenizer = processor.tokenizer
    prompt = tokenizer("部件1位于哪里？")["input_ids"]

    def vllm_text(ids: list[int]) -> str:
        stream, text = DecodeStream(ids=prompt, skip_special_tokens=True), ""
        for token in ids:
            try:
                text += stream.step(tokenizer._tokenizer, token) or ""
            except Exception as error:  # vLLM resets the stream on tokenizers' "Invalid prefix" (vllm #17448)
                assert str(error).startswith("Invalid prefix"), error
                stream = DecodeStream(skip_special_tokens=True)
                text += stream.step(tokenizer._tokenizer, token) or ""
        return text

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    rng = random.Random(0)
    cases = [[617, 1714, 1045, 2163, 1326, 2163, 1326, 2163], [617, 1714, 1045, 2163], [617, 1326, 1045],
             [1045, 151645], *([rng.randrange(100, 3000) for _ in range(rng.randrange(1, 16))] for _ in range(300))]
    mismatched = [ids for ids in cases if _complete(decode, ids) != vllm_text(ids)]
    assert not mismatched, [(ids, _complete(decode, ids), vllm_text(ids)) for ids in mismatched[:3]]
    assert _complete(decode, cases[0]) == decode([617, 1714, 1045]) != decode(cases[0]).rstrip("\ufffd")


def test_vllm_engine_without_vllm_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    infer_cfg = OmegaConf.load(REPO / "conf/infer/vllm.yaml")
    model_cfg = OmegaConf.load(REPO / "conf/model/qwen2_5_vl_32b.yaml")
    with pytest.raises(ImportError) as error:
        make_engine(infer_cfg, model_cfg)
    assert str(error.value) == VLLM_MISSING
    assert "make setup" in VLLM_MISSING and "`make gpu-install`" in VLLM_MISSING


# --- the OpenAI client against a stub server on 127.0.0.1 --------------------------------------

class _Stub(ThreadingHTTPServer):
    """Scripted OpenAI-compatible server: POST answers follow ``script`` (then 200)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[str] = []
        self.posts = 0
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay_s = 0.0
        self.models: list[dict[str, Any]] = [{"id": "base-model", "object": "model"}]
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: _Stub

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/v1/models":
            self._send(200, {"object": "list", "data": self.server.models})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        stub = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with stub.lock:
            stub.posts += 1
            stub.bodies.append(body)
            stub.auth.append(self.headers.get("Authorization"))
            action = stub.script.pop(0) if stub.script else "200"
            stub.in_flight += 1
            stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        time.sleep(stub.delay_s)
        # Counted out before the reply is written: once the client has its reply it may send the next
        # request, which another server thread could count before a decrement placed after the write.
        with stub.lock:
            stub.in_flight -= 1
        if action == "sleep":
            time.sleep(1.0)  # longer than the client's timeout
            return
        if action == "500":
            self._send(500, {"message": "internal error"})
        elif action == "400":
            self._send(400, {"message": "bad request"})
        elif action == "401echo":  # a server that echoes the credentials it got
            self._send(401, {"message": f"bad key: {self.headers.get('Authorization')}"})
        else:
            text = "".join(p.get("text", "") for p in body["messages"][0]["content"])
            answer = f"{body['model']}|{len(text)}|{text[-6:]}"
            self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})


@pytest.fixture
def stub() -> Iterator[_Stub]:
    server = _Stub()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return SECRET


def _client(url: str, **kwargs: Any) -> OpenAIEngine:
    options: dict[str, Any] = {"concurrency": 2, "timeout_s": 5.0, "max_retries": 3, "retry_backoff_s": 0.01}
    options.update(kwargs)
    return OpenAIEngine(base_url=url, **options)


def _expected(prompt: Prompt, model: str) -> str:
    text = "".join(part for part in prompt.parts if isinstance(part, str))
    return f"{model}|{len(text)}|{text[-6:]}"


SAMPLING = Sampling(max_new_tokens=16, temperature=0.0)


def test_openai_retries_5xx_with_backoff(stub: _Stub, secret: str, prompts: list[Prompt],
                                         caplog: pytest.LogCaptureFixture) -> None:
    stub.script = ["500", "500"]
    engine = _client(stub.url, concurrency=1)
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    assert engine.generate([prompts[4]], SAMPLING) == [_expected(prompts[4], "base-model")]
    assert stub.posts == 3 and engine.requests_sent == 4  # GET /models + 3 POSTs
    assert time.monotonic() - started >= 0.01 * (0.5 + 1.0)  # backed off (jittered 0.01 + 0.02 s at least halved)
    assert stub.auth == [f"Bearer {secret}"] * 3  # the key is sent...
    assert "HTTP 500" in caplog.text and secret not in caplog.text  # ...and never logged
    body = stub.bodies[-1]
    assert body["model"] == "base-model" and body["max_tokens"] == 16 and body["temperature"] == 0.0
    assert body["messages"] == [{"role": "user", "content": to_openai_content(prompts[4])}]
    engine.close()


def test_openai_gives_up_after_max_retries(stub: _Stub, secret: str, prompts: list[Prompt],
                                           caplog: pytest.LogCaptureFixture) -> None:
    stub.script = ["500"] * 10
    engine = _client(stub.url, model_name="m", max_retries=2)
    with pytest.raises(ServerError) as error:
        engine.generate([prompts[4]], SAMPLING)
    assert stub.posts == 3 and "after 3 attempts" in str(error.value) and "HTTP 500" in str(error.value)
    assert secret not in str(error.value) and secret not in caplog.text


def test_openai_does_not_retry_4xx_and_hides_the_key(stub: _Stub, secret: str, prompts: list[Prompt],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    stub.script = ["400"]
    engine = _client(stub.url, model_name="m")
    with pytest.raises(ServerError, match="HTTP 400"):
        engine.generate([prompts[4]], SAMPLING)
    assert stub.posts == 1
    stub.script = ["401echo"]
    with pytest.raises(ServerError) as error:
        engine.generate([prompts[4]], SAMPLING)
    assert stub.posts == 2 and "HTTP 401" in str(error.value) and "***" in str(error.value)
    text = "".join(traceback.format_exception(error.value)) + caplog.text  # chained causes included
    assert secret not in text


def test_openai_retries_timeouts_and_connection_errors(stub: _Stub, secret: str, prompts: list[Prompt],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    stub.script = ["sleep"]
    engine = _client(stub.url, model_name="m", timeout_s=0.3)
    assert engine.generate([prompts[4]], SAMPLING) == [_expected(prompts[4], "m")]
    assert stub.posts == 2 and "Timeout" in caplog.text
    closed = _client(f"http://127.0.0.1:{_closed_port()}/v1", model_name="m", max_retries=1)
    with pytest.raises(ServerError, match="after 2 attempts: ConnectError"):
        closed.generate([prompts[4]], SAMPLING)
    assert closed.requests_sent == 2 and secret not in caplog.text


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket closes


def test_openai_bounded_concurrency_keeps_order(stub: _Stub, pages: dict[int, str], secret: str) -> None:
    stub.delay_s = 0.05
    many = [classifier_prompt(f"问题{i}：" + "部件" * i) for i in range(10)]
    engine = _client(stub.url, model_name="m", concurrency=3)
    assert engine.generate(many, SAMPLING) == [_expected(p, "m") for p in many]
    assert 1 < stub.max_in_flight <= 3


def test_openai_model_names_for_adapters(stub: _Stub, tmp_path: Path, secret: str) -> None:
    ckpt = tmp_path / "v0-run" / "checkpoint-4"
    other = tmp_path / "v0-run" / "checkpoint-8"
    stub.models = [{"id": "base-model"}, {"id": "checkpoint-4"}, {"id": "lora-8", "root": str(other)}]
    engine = _client(stub.url)
    assert engine.model_for(None) == "base-model"  # GET /v1/models, first id
    assert engine.model_for(str(ckpt)) == "checkpoint-4"  # served as checkpoint-4=DIR
    assert engine.model_for(str(other)) == "lora-8"  # vllm serve reports the adapter's path as root
    assert engine.model_for("checkpoint-4") == "checkpoint-4"  # a served name
    with pytest.raises(ServerError, match="no served model for adapter"):
        engine.model_for(str(tmp_path / "checkpoint-12"))
    mapped = _client(stub.url, model_name="served-base", adapter_names={str(ckpt): "my-lora"})
    assert mapped.model_for(None) == "served-base" and mapped.model_for(str(ckpt)) == "my-lora"


def test_openai_from_config(stub: _Stub, secret: str, prompts: list[Prompt]) -> None:
    infer_cfg = OmegaConf.load(REPO / "conf/infer/openai.yaml")
    infer_cfg.base_url = stub.url
    engine = make_engine(infer_cfg, OmegaConf.create({"image_factor": 28}))
    assert isinstance(engine, OpenAIEngine) and engine.concurrency == 8 and engine.max_retries == 4
    assert engine.generate([prompts[4]], SAMPLING) == [_expected(prompts[4], "base-model")]
    assert stub.bodies[-1]["repetition_penalty"] == 1.0  # extra_body: plain greedy on every server
    assert chat_request(prompts[4], "m", SAMPLING, extra_body={"seed": 1})["seed"] == 1
    engine.close()
