# radstack: `make run` starts the platform on its embedded defaults; `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= ./var

.PHONY: install viewer run test lint bench clean starter-model

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The pinned OHIF build, fetched (npm pack), verified and cached once; later runs need no network.
viewer: install
	$(BIN)/radstack viewer fetch

run: install viewer
	$(BIN)/radstack serve --data-dir $(DATA_DIR) --demo

# The shipped starter model (src/radstack/ai/starter/): trained from its recipe.json, exported, evaluated.
starter-model: install
	$(BIN)/radstack models build-starter --processes 2

LINT_PATHS := src tests $(wildcard bench)

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy  # over src, tests and bench: [tool.mypy] files in pyproject.toml
	$(BIN)/lint-imports  # the layering: [tool.importlinter] in pyproject.toml

test: install lint viewer
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python bench/dicomweb.py
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
