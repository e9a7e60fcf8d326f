# revsync: every target installs what it needs first, so a fresh clone needs only `make demo`
# or `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENARIO ?= passthrough
# Development tools built from source, gitignored (deploy/helm/check.sh builds helm there too).
TOOLS := $(CURDIR)/.tools
TOXIPROXY_VERSION := v2.12.0
TOXIPROXY_SERVER := $(TOOLS)/bin/toxiproxy-server
TOXIPROXY_CLI := $(TOOLS)/bin/toxiproxy-cli

.PHONY: install stack-up stack-down test lint lock demo bench clean toxiproxy chaos proto

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
	./deploy/check-lock.sh
	./deploy/helm/check.sh

# requirements.lock: what the image installs (pip --require-hashes), every distribution pinned
# with its hashes: pyproject's run-time dependencies and its build requirements (the image
# builds revsync without build isolation, so nothing unhashed is fetched), resolved for the
# image's CPython 3.11 on Linux. Existing pins stay unless pyproject's ranges move them;
# LOCK_ARGS=--upgrade (or --upgrade-package NAME) moves them on. pip-tools runs from a venv of
# its own in .tools, never the project's; deploy/check-lock.sh fails when the lock is stale.
PIP_TOOLS_VERSION := 7.7.0
PIP_TOOLS_PIP_VERSION := 26.3
PIP_TOOLS := $(TOOLS)/pip-tools
LOCK_ARGS ?=
lock:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) or sys.platform != "linux")' \
		|| { echo "make lock resolves for the image: run it with CPython 3.11 on Linux (PYTHON=python3.11)"; exit 1; }
	@if [[ ! -f $(PIP_TOOLS)/.pip-tools-$(PIP_TOOLS_VERSION) ]]; then \
		echo "installing pip-tools $(PIP_TOOLS_VERSION) into $(PIP_TOOLS)" && \
		rm -rf $(PIP_TOOLS) && $(PYTHON) -m venv $(PIP_TOOLS) && \
		$(PIP_TOOLS)/bin/pip install -q --disable-pip-version-check \
			"pip==$(PIP_TOOLS_PIP_VERSION)" "pip-tools==$(PIP_TOOLS_VERSION)" && \
		touch $(PIP_TOOLS)/.pip-tools-$(PIP_TOOLS_VERSION); \
	fi
	CUSTOM_COMPILE_COMMAND="make lock" $(PIP_TOOLS)/bin/pip-compile --quiet --generate-hashes \
		--allow-unsafe --all-build-deps --strip-extras --no-emit-find-links --no-emit-index-url \
		--output-file requirements.lock $(LOCK_ARGS) pyproject.toml

# The Salesforce Pub/Sub API stubs, generated from the .proto beside them and committed (a unit
# test holds them to it). The plugins run from the virtualenv, hence its bin on PATH.
PUBSUB_PROTO := services/revsync/connectors/pubsub_api/pubsub_api.proto
proto: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I services \
		--python_out=services --mypy_out=services \
		--grpc_python_out=services --mypy_grpc_out=services $(PUBSUB_PROTO)

# The order-to-cash demo; pass options with DEMO_ARGS="--orders 200".
demo: install
	$(BIN)/python -m sandbox.demo $(DEMO_ARGS)

bench: stack-up $(VENV)/.bench-installed
	$(BIN)/python -m bench $(SCENARIO)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/pip install -q --disable-pip-version-check -e '.[bench]'
	touch $@

# Toxiproxy (TCP fault injection for the chaos tests), built from source with go install from
# the Go module proxy, as deploy/helm/check.sh builds helm: only when a binary is missing or
# reports another version. go install names the binaries after their folders (server, cli),
# hence the rename.
toxiproxy:
	@if [[ "$$($(TOXIPROXY_SERVER) -version 2>/dev/null)" == *" $(TOXIPROXY_VERSION)" && \
	      "$$($(TOXIPROXY_CLI) --version 2>/dev/null)" == *" $(TOXIPROXY_VERSION)" ]]; then \
		echo "toxiproxy $(TOXIPROXY_VERSION) already in $(TOOLS)/bin"; \
	else \
		echo "installing toxiproxy $(TOXIPROXY_VERSION) into $(TOOLS)/bin (go install)" && \
		rm -rf $(TOOLS)/toxiproxy-build && mkdir -p $(TOOLS)/bin $(TOOLS)/toxiproxy-build && \
		GOBIN=$(TOOLS)/toxiproxy-build CGO_ENABLED=0 go install -trimpath \
			-ldflags "-s -w -X github.com/Shopify/toxiproxy/v2.Version=$(TOXIPROXY_VERSION)" \
			github.com/Shopify/toxiproxy/v2/cmd/server@$(TOXIPROXY_VERSION) \
			github.com/Shopify/toxiproxy/v2/cmd/cli@$(TOXIPROXY_VERSION) && \
		mv $(TOOLS)/toxiproxy-build/server $(TOXIPROXY_SERVER) && \
		mv $(TOOLS)/toxiproxy-build/cli $(TOXIPROXY_CLI) && \
		rmdir $(TOOLS)/toxiproxy-build; \
	fi

# The fault suite, on servers of its own (never the stack `make stack-up` runs): the chaos-marked
# tests (a three-broker stack, Toxiproxy), then the whole pipeline under kills and network
# faults (bench/chaos.py, bench/results/chaos.json). CHAOS_PROFILE=short CHAOS_ORDERS=300 is the
# version CI runs; the default is the full one.
CHAOS_PROFILE ?= full
CHAOS_ORDERS ?= 10000
chaos: $(VENV)/.bench-installed toxiproxy
	$(BIN)/pytest -m chaos tests/integration/test_stack_brokers.py
	CHAOS_PROFILE=$(CHAOS_PROFILE) $(BIN)/python -m bench chaos --events $(CHAOS_ORDERS)

clean: stack-down
	rm -rf $(VENV) .stack .mypy_cache .ruff_cache .pytest_cache
