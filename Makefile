PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The local CPU build; set TORCH_SPEC to a CUDA build's requirement (and PIP_EXTRA_INDEX_URL) elsewhere.
TORCH_SPEC ?= torch==2.13.0

.PHONY: serve test venv lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

serve: venv
	$(BIN)/retserve serve

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
