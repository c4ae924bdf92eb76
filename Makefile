# mtkit: `make install` then `make test`. `make demo` is the main job (Ding de->en, ~30 min on a laptop CPU).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MTKIT := $(VENV)/bin/mtkit
# The pinned CPU build that pip finds locally here; a user's own torch is kept (see install).
TORCH_SPEC ?= torch==2.13.0
DEMO_TIME ?= 30m

.PHONY: install test test-fast test-min lint data demo bench clean-venv

install:
	@# Keep a torch the user already has: the venv then sees the system site-packages.
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "make install: using the torch already installed for $(PYTHON)"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	@# Install the pinned CPU torch before the package, so its `torch>=...` range is already met.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --disable-pip-version-check -e ".[test,ct2,plot,hf]"
	@$(MTKIT) --version

# Two pytest processes (pytest-xdist): most tests are Python-bound, so two share 2 cores well
# (make test: 5m42 instead of 8m56 on a 2-core Zen 2). TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test:
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

test-fast:
	$(PY) -m pytest -q -m "not slow" tests

# The lowest versions pyproject.toml declares (.ci/min_constraints.py), in their own venv, with the
# fast tests: the floors are tested, not guessed. torch's floor comes from PyPI as a CUDA build
# (~3 GB with its nvidia packages; it runs on the CPU): slow the first time, cached after.
VENV_MIN ?= .venv-min
test-min:
	@[ -x $(VENV_MIN)/bin/python ] || $(PYTHON) -m venv $(VENV_MIN)
	$(VENV_MIN)/bin/python .ci/min_constraints.py > $(VENV_MIN)/constraints.txt
	$(VENV_MIN)/bin/pip install --disable-pip-version-check -c $(VENV_MIN)/constraints.txt -e ".[test,ct2,plot,hf]"
	$(VENV_MIN)/bin/pip list --disable-pip-version-check | grep -iE '^(torch|datasets|numpy|pyarrow|sentencepiece|sacrebleu|typer|click|pyyaml|tqdm|ctranslate2|matplotlib|pytest) '
	$(VENV_MIN)/bin/python -m pytest -q -m "not slow" -p no:cacheprovider tests

lint:
	$(VENV)/bin/ruff check .

data:
	$(MTKIT) data ding --out data/ding-de-en

demo: data
	bash bench/demo.sh $(DEMO_TIME)

# Quick regression figures for mtkit alone (a minute or two; not part of `make test`):
# training tokens/s fp32 vs bf16 on Ding batches, and decoding speed of a trained model if any.
BENCH_MODEL ?= runs/ding-de-en/best.pt
bench: data
	$(PY) bench/train_speed.py --steps 5 --rounds 2
	@if [ -f $(BENCH_MODEL) ]; then \
	  $(PY) bench/decode_speed.py $(BENCH_MODEL) --src data/ding-de-en/test.de --limit 300; \
	else echo "make bench: no $(BENCH_MODEL) to time decoding (train one: make demo)"; fi

clean-venv:
	rm -rf $(VENV) $(VENV_MIN)
