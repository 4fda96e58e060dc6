# Two commands set everything up on a fresh machine (Python >= 3.10):
#   make demo   creates .venv, installs torch==2.13.0 then diffuseg, runs `diffuseg demo`
#   make test   the same install plus test tools, then the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
# tcmalloc makes CPU training about 1.8x faster here (docs/performance.md); used when installed.
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4))
export LD_PRELOAD := $(TCMALLOC)

# Run once more with bf16 forced (DIFFUSEG_PRECISION, docs/performance.md): precision=auto picks
# fp32 on AVX2-only CPUs, so there the main run never takes the bf16 path that AVX-512 BF16 CPUs
# take by default; these files check it for inference, explanations and metrics. Tiny models
# only: bf16 is emulated on AVX2 (about 40x slower per convolution), yet these took 20-50 s on
# 2 busy cores, also with AVX2 forced (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2).
BF16_TESTS := tests/core/test_runtime.py tests/inference/test_predict.py tests/review/test_explain.py \
	tests/metrics/test_overlap.py

.PHONY: install install-test demo test test-bf16 test-all lint bench-lidc clean

# `make demo` installs only what diffuseg needs; the test tools come with `make test`.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.test-installed

demo: install
	$(VENV)/bin/diffuseg demo -o demo_output --overwrite

test: install-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -n 2 -p no:cacheprovider
	$(MAKE) --no-print-directory test-bf16

test-bf16: install-test
	DIFFUSEG_PRECISION=bf16 $(PY) -m pytest -q -n 2 -p no:cacheprovider $(BF16_TESTS)

test-all: install-test
	$(PY) -m pytest -q -n 2 -p no:cacheprovider -m ""

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache
