# hfmesh — the two commands: `make run` (the local mesh) and `make test`.
PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: setup run check test test-heavy test-quick test-clients test-deploy proto bench

LINT_PATHS := services tests bench scripts

setup:
	scripts/setup.sh

## Start the whole mesh locally on the default models; prints the URL to call.
run: setup
	$(PY) -m services.launcher

## STYLE.md enforced: formatting, lint (pyproject's [tool.ruff]) and types (its [tool.mypy]).
check: setup
	$(PY) -m ruff format --check $(LINT_PATHS)
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m mypy

## The third-party clients some slow tests run from their own venvs (the kserve SDK).
test-clients:
	scripts/setup_test_clients.sh

## The test suite (what CI runs), after the checks: every tier but `heavy` (under 20 minutes).
test: setup check test-clients
	HF_HUB_OFFLINE=1 $(PYTEST) tests -m "not heavy"

## The heavy tier: scale-out under minutes of load, 2,000-request canary split and
## cancellations, vLLM behind mutual TLS (about 8 minutes on 2 cores).
test-heavy: setup test-clients
	HF_HUB_OFFLINE=1 $(PYTEST) tests -m heavy

## The quick tier: no real model loads, no multi-process meshes.
test-quick: setup check
	HF_HUB_OFFLINE=1 $(PYTEST) tests -m "not slow"

## Containers for real: build every CPU image, compose up, real clients, down -v (docs/deploy.md).
test-deploy: setup
	PY=$(PY) scripts/test_deploy.sh

proto:
	$(PY) scripts/gen_proto.py

bench: setup
	$(PY) bench/mesh_tasks.py
	$(PY) bench/engine_hf.py
	$(PY) bench/gateway.py
	$(PY) bench/vllm_mesh.py
	$(PY) bench/overload.py
