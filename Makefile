VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint format demo bench clean

setup:
	@./scripts/setup.sh

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache
