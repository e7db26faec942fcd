# The README's two commands. Each sets up the virtualenv on a fresh machine, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit install services bench clean

demo: $(STAMP)
	$(BIN)/cgt-hub demo

test: $(STAMP) services lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "CGT Hub needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# Under CI the real services must be up: start them if they stopped (never fatal locally).
services:
	@if [ "$$CI" = "true" ]; then ./.ci/services; fi

bench: $(STAMP)
	$(BIN)/python bench/courier_webhooks.py --requests 6000
	$(BIN)/python bench/courier_webhooks.py --requests 6000 --backend postgres
	$(BIN)/python bench/courier_webhooks.py --requests 6000 --backend postgres --workers 2
	$(BIN)/python bench/temperature_readings.py --readings 50000
	$(BIN)/python bench/accept_orders.py --orders 3000
	$(BIN)/python bench/audit_verify.py --entries 500000
	$(BIN)/python bench/fhir_api.py --backend both --creates 1500 --orders 100000
	$(BIN)/python bench/mllp_ingest.py --messages 10000 --memory 100000
	$(BIN)/python bench/mllp_ingest.py --messages 10000 --backends postgres --workers 2

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
