# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install the pinned requirements, run the main job on the embedded demo tasks
#   make test   - create .venv, install, run ruff, mypy and the whole test suite (what CI runs)
PYTHON ?= python3
# The pins need Python 3.11: numpy 2.4, scipy 1.17, pandas 3.1 and matplotlib 3.11 require >= 3.11,
# and the development machines' torch 2.13.0 wheel is built for CPython 3.11 only.
PYTHON_VERSION ?= 3.11
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast lint lock clean check-python compile

# Fails early, before a venv is made, when $(PYTHON) is not Python $(PYTHON_VERSION).
check-python:
	@found=$$($(PYTHON) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null) || found="none ($(PYTHON) not found)"; \
	case "$$found" in $(PYTHON_VERSION)|$(PYTHON_VERSION).*) ;; \
	*) echo "Python $(PYTHON_VERSION) is needed, found $$found at PYTHON=$(PYTHON): the pins in requirements.txt need it; run e.g. make PYTHON=python$(PYTHON_VERSION) $(or $(GOALS),$(MAKECMDGOALS))" >&2; exit 1;; esac

# requirements-lock.txt pins every package they pull in (the Docker image installs from it too)
$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-lock.txt
	@$(MAKE) --no-print-directory check-python PYTHON=$(PYTHON) PYTHON_VERSION=$(PYTHON_VERSION) GOALS="$(MAKECMDGOALS)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c requirements-lock.txt
	touch $@

# Byte-code of our modules, written once: where PYTHONDONTWRITEBYTECODE is set (as on many machines and
# in the image), Python would otherwise compile every module at every start (~0.05 s per evaluator run).
compile: $(VENV)/.installed
	@$(PY) -m compileall -q learn2reg evaluation pipeline

demo: compile
	$(PY) -m pipeline demo --out $(DEMO_OUT)

test: lint
	$(PY) -m pytest -n 2 --dist loadfile tests

test-fast: compile
	$(PY) -m pytest -n 2 -m "not slow and not docker" tests

# ruff (style, imports, bug patterns) and mypy (types; settings in pyproject.toml) on the whole tree
lint: compile
	$(VENV)/bin/ruff check learn2reg pipeline evaluation tests bench tools
	$(VENV)/bin/mypy

# rewrite requirements-lock.txt from the .venv, after changing a pin in requirements*.txt and
# installing it there ($(VENV)/bin/pip install -r requirements-dev.txt)
lock: $(VENV)/.installed
	$(PY) -m tools.lock > requirements-lock.txt.partial && mv requirements-lock.txt.partial requirements-lock.txt

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
