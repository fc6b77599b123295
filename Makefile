# execd — every target builds .venv on its own when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint sim bench bench-full clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

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

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
