# `make demo` and `make test` work on a fresh clone with only Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null || \
		{ echo "lmforge needs Python 3.11+ (set PYTHON=/path/to/python3.11)"; exit 2; }
	$(PYTHON) -m venv $(VENV)

# pip (not uv) finds the local CPU build of torch; constraints.txt pins every tested version.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[tensorboard,bench,dev,data,ray,semantic,dvc,qlora,sweep,eval]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lmforge demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/sft_lora_throughput.py

clean:
	rm -rf $(VENV) demo-run .pytest_cache
