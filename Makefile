# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install  ## score a sample file end to end on embedded defaults (no servers)
	$(BIN)/audioset run --demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # the docs site: a broken link fails

test: install lint  ## lint, type-check and run every test (starts its own redis-server, S3 server and workers)
	@command -v redis-server >/dev/null || { echo "tests need redis-server on PATH (apt-get install redis-server)"; exit 1; }
	$(BIN)/pytest -n auto --dist worksteal --durations=15  # one test process per core; tests share no state; the slowest listed

bench: install  ## performance figures as JSON (not a test)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) buckets site .pytest_cache .mypy_cache .ruff_cache
