# revsync: every target installs what it needs first, so a fresh clone needs only `make demo`
# or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENARIO ?= passthrough

.PHONY: install stack-up stack-down test lint demo bench clean

install: $(VENV)/.installed

# Re-install only when the dependencies change; the editable install picks up code edits.
$(VENV)/.installed: pyproject.toml devstack/pyproject.toml deploy/local/install-deps.sh
	./deploy/local/install-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]' -e ./devstack
	touch $@

stack-up: install
	$(BIN)/revsync stack up

stack-down: install
	$(BIN)/revsync stack down

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/revsync schemas lint
	$(BIN)/revsync schemas check
	./deploy/check-wheel.sh
	./deploy/helm/check.sh

# The order-to-cash demo; pass options with DEMO_ARGS="--orders 200".
demo: install
	$(BIN)/python -m sandbox.demo $(DEMO_ARGS)

bench: stack-up $(VENV)/.bench-installed
	$(BIN)/python -m bench $(SCENARIO)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	touch $@

clean: stack-down
	rm -rf $(VENV) .stack .mypy_cache .ruff_cache .pytest_cache
