# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint types audit pytest bench bench-instructions lock clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "APIForge needs Python 3.11 or newer: set PYTHON=python3.11 (or newer) and run make again")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	@touch $(STAMP)

## demo: install, then run the reference users API on embedded storage
demo: $(STAMP)
	$(BIN)/apiforge demo --data-dir .apiforge/demo

## test: lint, types, security audits and the whole test suite
test: lint types audit pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts

types: $(STAMP)
	$(BIN)/mypy --strict src

audit: $(STAMP)
	$(BIN)/bandit -q -c pyproject.toml -r src
	$(BIN)/pip-audit --disable-pip --no-deps -r constraints.txt --progress-spinner off
	$(BIN)/python scripts/audit_latest.py constraints.txt

pytest: $(STAMP)
	$(BIN)/pytest -q

## bench: load benchmarks with wrk on loopback; writes docs/benchmarks.md and bench/results.json
bench: $(STAMP)
	$(BIN)/python bench/run.py

## bench-instructions: instructions per request under valgrind; writes docs/instructions.md
bench-instructions: $(STAMP)
	$(BIN)/python bench/instructions.py --markdown docs/instructions.md

## lock: re-pin every dependency to what is installed now
lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^apiforge' > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
