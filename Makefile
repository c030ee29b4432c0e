# The two commands of the README:
#   make run    install into .venv, start the embedded server with an example model
#   make test   install into .venv, run the whole test suite
# Everything else here is a helper of those two.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
EXT_SOURCES := $(wildcard ext/*.pyx ext/*.pxd) setup.py

.PHONY: run test test-fast lint bench build protos clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,lint,bench]'
	touch $(STAMP)

# Rebuild the extensions in place when a Cython source changes.
$(VENV)/.ext-stamp: $(STAMP) $(EXT_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: $(VENV)/.ext-stamp

run: build
	$(PY) -m clipper_core.demo

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: build
	$(PY) -m pytest -m 'not slow' $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check clipper_core model_containers tests bench
	$(VENV)/bin/mypy
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/cython-lint ext/

bench: build
	$(PY) -m pytest bench --benchmark-only --benchmark-columns=min,median,ops $(PYTEST_ARGS)

protos: $(STAMP)
	$(PY) -m protos.generate

clean:
	rm -rf build ext/*.so ext/*.c ext/*.html $(VENV)
