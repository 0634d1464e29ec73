# The two commands of the README: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo up test lint bench openapi setup

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/gantry demo

up: $(BIN)/.installed
	$(BIN)/gantry local up

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(BIN)/.installed lint
	$(BIN)/pytest -n auto -q

bench: $(BIN)/.installed
	$(BIN)/python -m benchmarks

openapi: $(BIN)/.installed
	$(BIN)/python -m lambdas.api.openapi > docs/openapi.json
