PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The local CPU build; set TORCH_SPEC to a CUDA build's requirement (and PIP_EXTRA_INDEX_URL) elsewhere.
TORCH_SPEC ?= torch==2.13.0

.PHONY: serve test venv lint bench clean loadtest loadtest-smoke image image-cuda fuzz

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

# heavy tools only for the commands that need them; torch stays the one installed above
$(VENV)/.loadgen: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[loadgen]"
	touch $@

$(VENV)/.loadtest: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[loadtest]"
	touch $@ $(VENV)/.loadgen

# 64 conversations x 50 turns on two replicas sharing one Redis -> loadtest/results/
loadtest: $(VENV)/.loadtest
	$(BIN)/python -m loadtest.run $(LOADTEST_ARGS)

# CI: 4 conversations x 3 turns, fails on any failed request or cross-replica miss
loadtest-smoke: $(VENV)/.loadgen
	$(BIN)/python -m loadtest.run --smoke --check --out runs/loadtest-smoke

# needs a Docker engine (none on the development machines: tests/deploy checks the files)
image:
	docker build -t retserve:latest .

image-cuda:
	docker build -t retserve:cuda --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04 \
		--build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .

# hostile input everywhere (a long API fuzz, hostile requests, forged records, faults under
# load) -> runs/fuzz.json; FUZZ_ARGS go to `retserve bench fuzz` (see its --help)
fuzz: venv
	mkdir -p runs
	$(BIN)/retserve bench fuzz --json $(FUZZ_ARGS) > runs/fuzz.json
	$(BIN)/python -c "import json; print(json.dumps(json.load(open('runs/fuzz.json'))['summary'], indent=2))"

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
