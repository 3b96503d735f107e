# The two set-up commands of README.md. Both create or reuse .venv in the project root.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test setup setup-dev lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt

setup-dev: $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt

run: setup
	$(BIN)/python launch.py

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: setup-dev
	bash scripts/test.sh

bench: setup-dev
	bash scripts/bench.sh
