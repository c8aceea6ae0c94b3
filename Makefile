# `make run` and `make test` work on a fresh clone: they create .venv and install first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PREFECT_HOME ?= $(CURDIR)/.prefect
# pytest-xdist workers for `make test`: most of a test's time is spent waiting on the Prefect
# servers and `siit` processes it starts; each worker has its own server and prepared project.
# Modules go to the workers whole, longest first (LONG_MODULES in tests/conftest.py): xdist's
# own re-sorting by number of tests is turned off, else the one-test modules come last.
TEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install run test test-all lint format ui clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(BIN)/siit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU install path: the pinned torch takes the local CPU wheel, not a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/siit ## create .venv and install the project (torch pinned to the CPU build)

run: install ## reproduce the pipeline (dvc repro) and print the results table
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/siit repro
	@echo
	@PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/siit show

test: install ## run the whole test suite
	$(BIN)/python -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=15

test-all: install ## tests including the slow ones (real SmolLM2, several processes)
	$(BIN)/python -m pytest -q

lint: install ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## ruff fix + format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: install ## MLflow UI on 127.0.0.1:5000 (prints the link to the runs table)
	@$(BIN)/python -c "from components import tracking; from components.config import load_params; \
	  print('runs table:', tracking.ui_link(load_params().tracking))" 2>/dev/null || true
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean: ## remove pipeline outputs (data, artifacts, reports, mlflow.db), keep .venv
	rm -rf data artifacts reports/*.json reports/*.parquet reports/*.png reports/models mlflow.db mlartifacts .prefect
