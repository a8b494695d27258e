# Every target sets up its own virtualenv on first use, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint bench container-test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/gateway serve --config config.toml

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench examples
	$(BIN)/ruff format --check gateway tests bench examples
	$(BIN)/mypy

container-test: $(STAMP)
	$(BIN)/python -m tests.container_check

bench: $(STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.operations

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .pytest_cache .ruff_cache
