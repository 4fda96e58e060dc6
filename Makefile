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

.PHONY: install install-test demo test test-all lint bench-lidc clean

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

test-all: install-test
	$(PY) -m pytest -q -n 2 -p no:cacheprovider -m ""

lint: install-test
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo_output .pytest_cache
