# Thin targets, one command each. `make test` and `make parity-report` install first if needed.
PYTHON := .venv/bin/python
MODEL ?=
DEVICE ?= cpu
DTYPE ?= float32
REPORT_ARGS = $(if $(MODEL),--model $(MODEL)) --device $(DEVICE) --dtype $(DTYPE)

.PHONY: install test test-all parity-report lint format fixtures-audio

install: .venv/installed

.venv/installed: pyproject.toml
	python3 -m venv .venv
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

test: install
	$(PYTHON) -m pytest parity_tests/

parity-report: install
	$(PYTHON) -m harness report $(REPORT_ARGS)

lint: install
	$(PYTHON) -m ruff check harness parity_tests fixtures conftest.py
	$(PYTHON) -m ruff format --check harness parity_tests fixtures conftest.py

format: install
	$(PYTHON) -m ruff format harness parity_tests fixtures conftest.py

fixtures-audio: install
	$(PYTHON) fixtures/make_audio.py
