# One target per habit. `make run` and `make test` are the README's first two commands:
# each installs what it needs (a .venv pinned by constraints.txt) before it runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
DATA_DIR ?= ./profilehook-data
# The console's browser tests use Debian's chromium (.ci/services installs it): Playwright must
# never fetch a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1

.PHONY: run test test-fast lint typecheck format bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,postgres,nats,copernica]'
	touch $(STAMP)

run: $(STAMP)
	PROFILEHOOK_DATA_DIR=$(DATA_DIR) $(BIN)/profilehook serve --quickstart --port $(PORT)

test: $(STAMP)
	bash .ci/services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

# The inner loop: the same checks and every test not marked `slow` (those start real server
# processes or take many seconds); `make test` still runs them all.
test-fast: $(STAMP)
	bash .ci/services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -m 'not slow'

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
