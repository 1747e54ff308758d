# Two commands on a fresh machine: `make run` (the main job) and `make test` (the suite).
# Each creates .venv and installs everything on first use; a second call reuses it.
# `make lab` opens the notebooks in JupyterLab, `make mlflow` the quickstart's MLflow UI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup lab mlflow clean

run: $(STAMP)
	$(BIN)/senolab run --out runs/quickstart

# Two workers with one torch thread each (tests/conftest.py): steadier than one process
# with two OpenMP threads, which stall whenever anything else shares the cores.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2

setup: $(STAMP)

# JupyterLab on the project's environment (its python3 kernel is .venv's interpreter).
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks

# The MLflow UI on the store `make run` writes (http://127.0.0.1:5000; `make run` prints
# the address of its experiment's runs page).
mlflow: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/quickstart/mlflow.db

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
