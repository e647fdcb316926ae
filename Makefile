# DS01 developer entry points. `make test` is the test command (README and CI use it).
VENV := .venv
PY := $(VENV)/bin/python
RUFF := $(VENV)/bin/ruff

.PHONY: venv test lint fmt demo bench gpu-check

# Idempotent and quick when nothing changed: installs missing host packages (root) and .venv.
venv:
	bash scripts/setup-host.sh

test: venv
	$(RUFF) check .
	$(RUFF) format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: venv
	$(RUFF) check . && $(RUFF) format --check . && $(PY) -m mypy

fmt: venv
	$(RUFF) format . && $(RUFF) check --fix .

demo: venv
	$(PY) -m scripts.demo

bench: venv
	$(PY) -m scripts.bench

# On a host with an NVIDIA driver: DS01's NVML backend and allocator against the real devices
# (read-only, no container); elsewhere it prints why it skipped and succeeds. docs/gpu-check.md
gpu-check: venv
	$(PY) -m scripts.gpu_check
