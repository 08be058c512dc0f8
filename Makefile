# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install the pinned requirements, run the main job on the embedded demo tasks
#   make test   - create .venv, install, run the whole test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast lint clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) -m pipeline demo --out $(DEMO_OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -n 2 --dist loadfile tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest -n 2 -m "not slow and not docker" tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check pipeline evaluation tests bench

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
