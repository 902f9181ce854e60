# Cartography: `make demo` maps the built-in study, `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export DAGSTER_HOME := $(CURDIR)/.dagster
# numba (UMAP) compiles once and caches here across runs.
export NUMBA_CACHE_DIR := $(CURDIR)/.numba_cache
# torch and torchvision must be a matched pair; this pair is the one this project is tested on.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test ui lint format install clean-data help

help:
	@echo "make demo   - install and materialize every asset on the built-in shapes study"
	@echo "make test   - install test dependencies and run the tests"
	@echo "make ui     - open the Dagster UI (dagster dev) on the same instance"
	@echo "make lint   - ruff check + format check"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(VENV)/.chromium: $(VENV)/.installed
	@$(PY) -c "import playwright" 2>/dev/null || $(PIP) install --quiet playwright
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed; browser tests will be skipped"
	touch $@

demo: install
	mkdir -p $(DAGSTER_HOME) && touch $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/carto run

test: install $(VENV)/.chromium
	$(VENV)/bin/python -m pytest -q

ui: install
	mkdir -p $(DAGSTER_HOME) && touch $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml

lint: install
	$(VENV)/bin/ruff check carto_assets carto_viz tests benchmarks
	$(VENV)/bin/ruff format --check carto_assets carto_viz tests benchmarks

format: install
	$(VENV)/bin/ruff format carto_assets carto_viz tests benchmarks
	$(VENV)/bin/ruff check --fix carto_assets carto_viz tests benchmarks

clean-data:
	rm -rf data/carto.duckdb data/carto.duckdb.wal data/carto_files $(DAGSTER_HOME)
