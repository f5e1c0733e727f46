# The README's two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -e . -e ./client

install-dev: $(BIN)/python
	./scripts/install-system-deps.sh
	$(BIN)/pip install -e '.[dev]' -e ./client

serve: install
	$(BIN)/icseg serve --host $(HOST) --port $(PORT)

# ruff, then the architecture: import-linter's contracts in pyproject.toml (layers cli -> app -> model -> data)
lint:
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: install-dev lint
	$(BIN)/pytest -q

.PHONY: install install-dev serve lint test
