# Every target sets up what it needs on first use, so each works on a fresh machine.  `serve` installs only what
# serving needs; `test` adds the test tools, the client libraries of the client matrix and (when Node is there)
# the Node clients.
# Python 3.13 where the machine has one (pyenv's, or the system's), else python3: the gateway runs on 3.11 and
# later, but from 3.12 aiohttp starts each request's handler in the step that read it, which is what keeps the
# overload 503s fast under a burst (README, Resilience).  Override with `make PYTHON=... test`.
PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13 /usr/bin/python3.13 /usr/local/bin/python3.13) python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# Named after the interpreter, so that a venv of another Python is made anew rather than reused.
VENV_STAMP := $(VENV)/.made-by-$(notdir $(PYTHON))
SERVE_STAMP := $(VENV)/.serve-stamp
DEV_STAMP := $(VENV)/.dev-stamp
TEST_STAMP := $(VENV)/.test-stamp
NODE_CLIENTS := tests/clients/node
NODE_STAMP := $(NODE_CLIENTS)/node_modules/.ci-stamp

.PHONY: serve test lint bench container-test node-clients test-servers clean

$(VENV_STAMP):
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	touch $(VENV_STAMP)

$(SERVE_STAMP): pyproject.toml $(VENV_STAMP)
	$(PIP) -e .
	touch $(SERVE_STAMP)

$(DEV_STAMP): $(SERVE_STAMP)
	$(PIP) -e '.[dev]'
	touch $(DEV_STAMP)

$(TEST_STAMP): $(DEV_STAMP)
	$(PIP) -e '.[dev,clients]'
	touch $(TEST_STAMP)

# Without node on PATH the Node tests skip themselves (saying so); with it, npm ci installs the pinned clients.
node-clients:
	@if command -v node >/dev/null 2>&1; then $(MAKE) --no-print-directory $(NODE_STAMP); \
	else echo "node not found: the Node client tests will be skipped"; fi

$(NODE_STAMP): $(NODE_CLIENTS)/package-lock.json
	npm ci --prefix $(NODE_CLIENTS) --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# The PostgreSQL and replica tests start real servers from the distribution's packages: installed when missing
# (where this user may), else those tests skip themselves, saying so.
test-servers:
	@tests/install-servers.sh

serve: $(SERVE_STAMP)
	$(BIN)/gateway serve --config config.toml

test: $(TEST_STAMP) node-clients test-servers
	$(BIN)/python -m pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check gateway tests bench examples
	$(BIN)/ruff format --check gateway tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

container-test: $(DEV_STAMP)
	$(BIN)/python -m tests.container_check

bench: $(DEV_STAMP)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.operations
	$(BIN)/python -m bench.loop_stalls
	$(BIN)/python -m bench.slowloris
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.cache_cost
	$(BIN)/python -m bench.search --postgres

clean:
	rm -rf $(VENV) $(NODE_CLIENTS)/node_modules *.egg-info .mypy_cache .pytest_cache .ruff_cache
