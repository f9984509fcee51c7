VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint format demo down bench clean asyncapi vectors

setup:
	@./scripts/setup.sh

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# The whole platform at work: the local stack, a model built here, simulated devices,
# rollouts in waves, live stats, a canary and its promotion. Run it again: it continues.
demo: setup
	$(PY) scripts/demo.py --config $(or $(EAF_CONFIG),config/edgeaiforge.toml)

# Stop what `make demo` (or `edgeaiforge up`) started; the data under var/ stays.
down:
	$(VENV)/bin/edgeaiforge down

# Ratios against limits measured in the same run on servers it starts itself; writes
# bench/results.json. Never part of `make test`; a missed goal is a row, not a failure.
bench: setup
	$(PY) -m bench.run

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	@# Stop our processes first: their records and data are about to go.
	@if [ -x $(VENV)/bin/edgeaiforge ]; then $(VENV)/bin/edgeaiforge down; fi
	rm -rf var/ .pytest_cache .mypy_cache .ruff_cache

# The bus's AsyncAPI document (events and commands), kept in docs/ and served at /asyncapi.
asyncapi:
	$(PY) -c "from services.api.asyncapi import main; main()" > docs/asyncapi/asyncapi.json

# The device protocol's test vectors (tests/vectors/), from fixed keys and seeds.
vectors:
	$(PY) tests/vectors/generate.py
