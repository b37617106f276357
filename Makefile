# `make demo` trains the default model on the CPU and benchmarks it; `make test` runs the test suite.
# Both create .venv on first use and install torch pinned FIRST (an unpinned torch pulls a multi-GB CUDA build).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT := outputs/default

.PHONY: demo test test-fast test-slow install browser app clean

$(VENV)/.installed: setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,app]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/accelerate launch --num_processes 1 --cpu trainers/rlf.py --config trainers/configs/default.yaml --output_dir $(OUT)
	$(PY) benchmarks/ood_hops.py --model $(OUT)/final --variant shuffled
	$(PY) -m model_cards.generate $(OUT)/final

browser:  # Debian's headless Chromium, for tests/test_app.py's screenshot
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: install browser
	$(PY) -m pytest -q tests

test-fast: install browser  # the inner loop: everything but the end-to-end subprocess runs (each has a fast version)
	$(PY) -m pytest -q -m "not slow" tests

test-slow: install
	$(PY) -m pytest -q -m slow tests

app: install
	$(PY) app.py --model $(OUT)/final

clean:
	rm -rf $(VENV) outputs
