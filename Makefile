# lockgate: `make serve` and `make test` work on a fresh clone; each target creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODELS ?= models
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=
# `make serve` keeps its registry and artifacts in the checkout, not in ~/.lockgate.
export LOCKGATE_HOME ?= $(CURDIR)/.lockgate

.PHONY: install clients serve test check bench bench-full bench-peers bench-micro bench-governance lint audit-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The Cython build needs its build requirements in the venv (editable, no isolation).
$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard fastpath/*.pyx fastpath/*.pxd)
	$(BIN)/python -m pip install --quiet "setuptools>=77" wheel "Cython>=3.0" "numpy>=1.26"
	$(BIN)/python -m pip install --quiet --no-build-isolation -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

$(MODELS)/.built: $(STAMP) server/tools/demo.py
	$(BIN)/lockgate demo-repo $(MODELS)
	touch $@

serve: install $(MODELS)/.built
	$(BIN)/lockgate serve --model-repository $(MODELS) --host $(HOST) --port $(PORT) $(LOCKGATE_SERVE_ARGS)

test: install clients
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The clients the tests run unchanged against a live server (KServe's SDK, Triton's perf_analyzer),
# in an environment of their own: their pins are not the server's. perf_analyzer also needs
# Debian's libb64-0d (.ci/run installs it; tests/integration/test_ecosystem_clients.py says so).
clients: .venv-clients/.installed

.venv-clients/.installed: tests/clients/requirements.txt
	test -x .venv-clients/bin/python || $(PYTHON) -m venv .venv-clients
	.venv-clients/bin/pip install -q -r tests/clients/requirements.txt
	touch $@

bench: install
	$(BIN)/python bench/run.py --quick

bench-full: install bench-peers
	$(BIN)/python bench/run.py

# The OIP peers (Triton via PyTriton, KServe) in an environment of their own.
bench-peers: .venv-peers/.installed

.venv-peers/.installed: bench/peers/requirements.txt
	test -x .venv-peers/bin/python || $(PYTHON) -m venv .venv-peers
	.venv-peers/bin/pip install -q -r bench/peers/requirements.txt
	touch $@

bench-micro: install
	$(BIN)/python bench/micro/run.py

bench-governance: install
	$(BIN)/python bench/governance.py

# Known vulnerabilities in the installed dependencies (pip-audit; fails on a finding).
audit-deps: install
	$(BIN)/pip-audit --skip-editable --progress-spinner off --desc on

lint: install
	$(BIN)/python -m ruff check server fastpath plugins tests bench examples

# Format, lint, types and the import rules (docs/architecture.md). mypy and import-linter read the
# packages as installed (lockgate/server, ...): build/typecheck names the folders so.
TYPECHECK := build/typecheck
check: install
	$(BIN)/python -m ruff format --check server fastpath plugins tests bench examples
	$(BIN)/python -m ruff check server fastpath plugins tests bench examples
	mkdir -p $(TYPECHECK)/lockgate
	for d in server fastpath plugins; do ln -sfn ../../../$$d $(TYPECHECK)/lockgate/$$d; done
	$(BIN)/mypy -p lockgate.server -p lockgate.fastpath -p lockgate.plugins
	PYTHONPATH=$(TYPECHECK) $(BIN)/lint-imports --no-cache

clean:
	rm -rf build dist *.egg-info fastpath/*.c fastpath/*.so fastpath/*.html $(MODELS)
