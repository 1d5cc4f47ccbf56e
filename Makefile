# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test ui sandbox install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/m3-recon demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

ui: $(STAMP)
	$(BIN)/m3-recon ui

sandbox: $(STAMP)
	$(BIN)/m3-recon sandbox

clean:
	rm -rf $(VENV) .dagster_home data/*.duckdb data/*.duckdb.wal data/sandbox
