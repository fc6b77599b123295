# execd — every target builds .venv on its own when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# uv (make lock) and pip-audit (make audit) live in a venv of their own inside .venv: their
# dependencies are neither locked nor hashed and must not move a version the lock pinned.
TOOLS := $(VENV)/tools
TOOLS_STAMP := $(TOOLS)/.installed
# `make lock` keeps the versions already locked and only resolves what changed in
# pyproject.toml; LOCK_FLAGS=--upgrade moves everything to the newest releases,
# LOCK_FLAGS="--upgrade-package aiohttp" one package.
LOCK_FLAGS ?=

.PHONY: venv run test lint sim bench bench-full lock audit clean

# The exact versions of requirements.lock, every file checked against its hash, then execd
# itself without dependencies (they all came from the lock).
$(STAMP): pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	@$(BIN)/pip check >/dev/null || { $(BIN)/pip check; \
	  echo "$(LOCK) does not cover pyproject.toml's dependencies: run make lock"; exit 1; }
	touch $(STAMP)

$(LOCK):
	@echo "$(LOCK) is missing: run make lock"; exit 1

$(TOOLS_STAMP):
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip uv pip-audit
	touch $(TOOLS_STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/execd run

sim: $(STAMP)
	$(BIN)/execd sim

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/mypy --strict app

# Every bench/*.py script, one after another (the shared helpers are in bench/lib/, which the glob
# does not enter); a failed one (or a target not met) does not stop the others: the failures are
# listed at the end and make fails.
BENCH_RUN = failed=""; for f in bench/*.py; do echo "== $$f"; t0=$$(date +%s); \
	  $(BIN)/python $$f $(1) || failed="$$failed $$f"; echo "== $$f: $$(( $$(date +%s) - t0 )) s"; \
	done; if [ -n "$$failed" ]; then echo "failed or target NOT met:$$failed"; exit 1; fi

bench: $(STAMP)
	@$(call BENCH_RUN,--short)

bench-full: $(STAMP)
	@$(call BENCH_RUN,)

# Runtime and dev dependencies pinned with hashes, for Python 3.11 on Linux (every platform's
# files are hashed). Run it after changing the dependencies in pyproject.toml; commit both.
lock: $(TOOLS_STAMP)
	$(TOOLS)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes \
	  --python-version 3.11 --python-platform linux --custom-compile-command "make lock" \
	  --quiet $(LOCK_FLAGS) -o $(LOCK)

# Known vulnerabilities in the locked versions (needs PyPI's advisory data: not run by CI).
# --strict: a package that could not be checked fails the audit instead of passing unseen.
audit: $(TOOLS_STAMP)
	$(TOOLS)/bin/pip-audit --strict --require-hashes --disable-pip -r $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
