# chatbot-bridge: `make run` serves the demo on :8000 (no Redis needed); `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `make run` uses your config/products.toml, or the example file when there is none.
PRODUCTS_FILE := $(if $(wildcard config/products.toml),config/products.toml,config/products.example.toml)

.PHONY: install run test lint format check-config chaos bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: install
	BRIDGE_PRODUCTS_FILE=$${BRIDGE_PRODUCTS_FILE:-$(PRODUCTS_FILE)} \
	BRIDGE_LOG_FORMAT=$${BRIDGE_LOG_FORMAT:-console} \
	$(PY) -m app serve

check-config: install
	BRIDGE_PRODUCTS_FILE=$${BRIDGE_PRODUCTS_FILE:-$(PRODUCTS_FILE)} $(PY) -m app check-config

test: install
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
	$(PY) bench/chaos.py

bench: install
	$(PY) bench/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
