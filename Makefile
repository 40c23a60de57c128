# chatbot-bridge: `make run` serves the demo on :8000 (no Redis needed); `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `make run` uses your config/products.toml, or the example file when there is none.
PRODUCTS_FILE := $(if $(wildcard config/products.toml),config/products.toml,config/products.example.toml)

# The lock files pin every dependency with its hashes; pyproject.toml keeps the ranges.
LOCK := requirements/dev.txt
RUNTIME_LOCK := requirements/runtime.txt

.PHONY: install run test lint format check-config chaos bench lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

# Re-resolve the lock files from pyproject.toml (after changing a dependency range).
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip-tools
	$(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links \
		--output-file $(RUNTIME_LOCK) pyproject.toml
	$(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --extra embedded --extra test \
		--output-file $(LOCK) pyproject.toml

run: install
	BRIDGE_PRODUCTS_FILE=$${BRIDGE_PRODUCTS_FILE:-$(PRODUCTS_FILE)} \
	BRIDGE_LOG_FORMAT=$${BRIDGE_LOG_FORMAT:-console} \
	$(PY) -m app serve

check-config: install
	BRIDGE_PRODUCTS_FILE=$${BRIDGE_PRODUCTS_FILE:-$(PRODUCTS_FILE)} $(PY) -m app check-config

# redis-server for the store tests (standalone and cluster), promtool for the alert rules.
TEST_TOOLS := redis-server:redis-server redis-cli:redis-tools promtool:prometheus

test: install
	scripts/ensure-tools $(TEST_TOOLS)
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/ruff format --check app tests bench
	$(VENV)/bin/mypy app
	$(VENV)/bin/hadolint Dockerfile

format: install
	$(VENV)/bin/ruff format app tests bench
	$(VENV)/bin/ruff check --fix app tests bench

chaos: install
	scripts/ensure-tools redis-server:redis-server redis-cli:redis-tools
	$(PY) bench/chaos.py

bench: install
	scripts/ensure-tools redis-server:redis-server redis-cli:redis-tools wrk:wrk
	$(PY) bench/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
