# eeserve: the two set-up commands are `make run` and `make test` (see README.md).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test lint install tools clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: install if needed, serve on 127.0.0.1:8000 at once; missing default models build meanwhile
run: $(STAMP)
	$(BIN)/eeserve serve

## tools: promtool, hadolint, compose binary, chromium for the ops and page checks (best effort)
tools: $(STAMP)
	-scripts/ci_tools.sh

## test: install if needed, then lint (ruff, mypy) and the whole test suite
test: $(STAMP) tools lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check service policies models tools tests scripts deploy
	$(BIN)/mypy service policies models tools
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
