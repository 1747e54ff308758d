# Two commands on a fresh machine: `make run` (the main job) and `make test` (the suite).
# Each creates .venv and installs everything on first use; a second call reuses it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup clean

run: $(STAMP)
	$(BIN)/senolab run --out runs/quickstart

# Two workers with one torch thread each (tests/conftest.py): steadier than one process
# with two OpenMP threads, which stall whenever anything else shares the cores.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2

setup: $(STAMP)

# torch first from the local CPU wheel (an unpinned torch would pull the CUDA build);
# numpy and the build tools next because pyradiomics builds from source against them.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0 numpy setuptools wheel versioneer
	$(BIN)/pip install --quiet --no-build-isolation pyradiomics
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

clean:
	rm -rf $(VENV)
