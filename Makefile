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

# The project-local instance: defaults stored in DAGSTER_HOME, telemetry off (no banner).
INSTANCE_YAML := $(DAGSTER_HOME)/dagster.yaml

.PHONY: demo compare-demo test test-fast ui lint format install instance clean-data help

help:
	@echo "make demo   - install and materialize every asset on the built-in shapes study"
	@echo "make compare-demo - the demo network after its first epoch against the final one"
	@echo "make test   - install test dependencies and run the tests"
	@echo "make test-fast - the unit tier only: no Chromium, no whole-graph materialization"
	@echo "make ui     - open the Dagster UI (dg dev) on the same instance (UI_PORT=3000)"
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

# The cluster test (tests/integration/test_cluster.py) starts Debian's Redis and Postgres itself.
$(VENV)/.servers: $(VENV)/.installed
# The packages' own server (a main cluster, a redis service) is neither created nor needed.
	@command -v redis-server >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ( \
	  mkdir -p /etc/postgresql-common && echo 'create_main_cluster = false' >> /etc/postgresql-common/createcluster.conf && \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server postgresql >/dev/null) \
	  || echo "redis-server/postgresql not installed; the cluster test will be skipped"
	touch $@

instance:
	@mkdir -p $(DAGSTER_HOME)
	@grep -qs '^telemetry:' $(INSTANCE_YAML) || printf 'telemetry:\n  enabled: false\n' >> $(INSTANCE_YAML)

demo: install instance
	$(VENV)/bin/carto run

# The demo study (final network) and the same training after its first epoch, then the
# comparison of the two: data/compare/shapes-demo-epoch1-vs-final_views/index.html.
compare-demo: install instance
	$(VENV)/bin/carto run
	$(VENV)/bin/carto run --study examples/compare/demo-epoch1.yaml
	$(VENV)/bin/carto compare examples/compare/demo.yaml

# Two worker processes: most tests use one core (one torch thread, subprocesses starting up),
# so two at a time roughly halve the suite's wall time on a 2-core machine. Tests that share a
# session study or run in order are grouped onto one worker (xdist_group, --dist loadgroup).
TEST_WORKERS ?= 2
test: install $(VENV)/.chromium $(VENV)/.servers
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The unit tier, for the edit-test loop: everything but the `slow` (whole-graph, cluster, CLI
# end-to-end) and `browser` tests, on the same workers. `make test` still runs everything.
test-fast: install
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not browser"

# `dg dev` (what Dagster 1.13 recommends over `dagster dev`) in the activated environment.
UI_PORT ?= 3000
ui: install instance
	VIRTUAL_ENV=$(CURDIR)/$(VENV) PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dg dev --port $(UI_PORT)

lint: install
	$(VENV)/bin/ruff check carto_assets carto_viz tests benchmarks
	$(VENV)/bin/ruff format --check carto_assets carto_viz tests benchmarks

format: install
	$(VENV)/bin/ruff format carto_assets carto_viz tests benchmarks
	$(VENV)/bin/ruff check --fix carto_assets carto_viz tests benchmarks

clean-data:
	rm -rf data/carto.duckdb data/carto.duckdb.wal data/carto_files data/carto_views $(DAGSTER_HOME)
	rm -rf data/shapes-demo-epoch1.duckdb data/shapes-demo-epoch1_files data/compare
