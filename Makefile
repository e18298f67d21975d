# eeserve: the two set-up commands are `make run` and `make test` (see README.md).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The installer itself is pinned too: a new pip can resolve or build differently.
PIP_VERSION := 26.3
# Exact versions and sha256 hashes of every dependency (pip-compile output; `make lock`).
LOCK     := requirements.lock
DEV_LOCK := requirements-dev.lock
COMPILE   = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras \
            --no-emit-index-url --no-emit-find-links --resolver=backtracking

.PHONY: run test lint install tools lock upgrade-lock drift clean

# A fresh venv gets exactly the lock (hashes checked), then the project itself without deps.
$(STAMP): pyproject.toml $(DEV_LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)
	$(BIN)/pip install -q --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)

## run: install if needed, serve on 127.0.0.1:8000 at once; missing default models build meanwhile
run: $(STAMP)
	$(BIN)/eeserve serve

## tools: promtool, hadolint, compose binary, chromium for the ops and page checks (best effort)
tools: $(STAMP)
	-.ci/tools.sh

## test: install if needed, then lint (ruff, mypy) and the whole test suite
test: $(STAMP) tools lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check service policies models tools bench tests deploy
	$(BIN)/mypy service policies models tools bench
	$(BIN)/lint-imports --no-cache

## lock: re-resolve the locks after pyproject.toml changed, keeping every pin that still fits
## (upgrade-lock: move every package to the newest version pyproject.toml allows)
lock: $(STAMP)
	$(COMPILE) $(UPGRADE) --extra dev -o $(DEV_LOCK) pyproject.toml
	$(COMPILE) $(UPGRADE) -c $(DEV_LOCK) -o $(LOCK) pyproject.toml
	@echo "locks: $$(wc -l < $(DEV_LOCK)) lines $(DEV_LOCK), $$(wc -l < $(LOCK)) lines $(LOCK)"

upgrade-lock:
	$(MAKE) lock UPGRADE=--upgrade

## drift: non-gating: newest allowed versions in a throwaway venv; lint + unit tests; report
drift:
	.ci/drift.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
