# The README's two commands: `make serve` and `make test` (and `make test-deploy`, the compose stack run for real).
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

# after the unit suites: the image built with podman and run for real (scripts/container-check.sh image);
# bounded, and quick once the base and package layers are cached (README "Deploy")
CONTAINER_CHECK_TIMEOUT ?= 900

test: install-dev lint
	$(BIN)/pytest -q
	timeout --kill-after=60 $(CONTAINER_CHECK_TIMEOUT) ./scripts/container-check.sh image

# the compose stack for real: two api replicas behind the proxy, with podman-compose (README "Deploy")
test-deploy:
	timeout --kill-after=60 $(CONTAINER_CHECK_TIMEOUT) ./scripts/container-check.sh compose

.PHONY: install install-dev serve lint test test-deploy
