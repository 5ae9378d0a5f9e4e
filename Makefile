# make run   — set up (once) and run the main job on the embedded default (synthetic patents + tiny model, CPU)
# make test  — set up (once) and run the whole test suite (fast tier + e2e tier)
# make bench — set up (once), run the seed-vs-ours benchmarks, rewrite benchmarks/RESULTS.md (~10-12 min)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.patentqa-setup
# torch and torchvision must come as a matched pair from the same index (see README, "Why this torch").
TORCH_PAIR := "torch==2.14.1" "torchvision==0.29.1"

.PHONY: setup run test test-fast bench clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import torch, torchvision, swift, transformers, pymupdf; print('setup ok: torch', torch.__version__, '| torchvision', torchvision.__version__, '| transformers', transformers.__version__)"
	touch $(STAMP)

run: setup
	$(PY) -m patentqa.train +exp=smoke

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not e2e"

bench: setup
	$(PY) -m benchmarks

clean-cache:
	rm -rf .cache/pages .cache/datasets
