# The two commands of the README:
#   make run    install into .venv what running needs, start the embedded server with an example model
#   make test   install into .venv the test, lint and bench toolchain too, run the whole test suite
# Everything else here is a helper of those two.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `pip install -e .`: the runtime dependencies; the install compiles the extensions.
RUN_STAMP := $(VENV)/.run-stamp
# `pip install -e '.[test,lint,bench]'`: a superset of the run install.
TEST_STAMP := $(VENV)/.test-stamp
# The `docs` extra's packages (MkDocs, mkdocstrings), beside the run install.
DOCS_STAMP := $(VENV)/.docs-stamp
EXT_SOURCES := $(wildcard ext/*.pyx ext/*.pxd) setup.py
# The pinned protoc (protos/requirements.txt) lives in a venv of its own: its
# protobuf range need not fit the project's test environment.
PROTOS_VENV ?= build/protos-venv

.PHONY: run test test-slow lint bench build docs protos deps-matrix clean

# A Cython source newer than the install re-runs it, which recompiles the extensions.
$(RUN_STAMP): pyproject.toml setup.py $(EXT_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,lint,bench]'
	touch $@ $(RUN_STAMP)

# Rebuild the extensions in place when a Cython source changes (Cython comes with
# the test install).
$(VENV)/.ext-stamp: $(TEST_STAMP) $(EXT_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: $(VENV)/.ext-stamp

run: $(RUN_STAMP)
	$(PY) -m clipper_core.demo

# Two test processes, each taking whole files (module fixtures stay in one process):
# most tests wait on servers and containers they start, so two overlap well even
# on 2 cores (AMD EPYC, 2 cores: 10 min 42 s in one process, 6 min 11 s in two).
# TEST_PROCESSES=0 runs everything in this process.
TEST_PROCESSES ?= 2

test: build
	$(PY) -m pytest -n $(TEST_PROCESSES) --dist loadfile $(PYTEST_ARGS)

# The suites marked slow (bench smoke runs, per-model environments, the dashboard's
# browser test, the long HTTP fuzz): .ci/run runs them after `make test`.
test-slow: build
	$(PY) -m pytest -m 'slow and not long and not docs and not fuzz' $(PYTEST_ARGS)

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check clipper_core model_containers tests bench
	$(VENV)/bin/ruff format --check clipper_core model_containers tests bench
	$(VENV)/bin/mypy
	PATH=$(abspath $(VENV))/bin:$$PATH $(VENV)/bin/cython-lint ext/

bench: build
	$(PY) -m pytest bench --benchmark-only --benchmark-columns=min,median,ops $(PYTEST_ARGS)

# Only the extra's own packages: the project is there already (the run install),
# and `pip install -e '.[docs]'` would compile the extensions again.
$(DOCS_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"]))' \
		| xargs $(PY) -m pip install -q
	touch $@

# The documentation site, into build/site; --strict: a broken link or anchor, or
# any other warning, fails the build.  The CLI, configuration and metrics pages
# are generated from the code by the hooks in docs/hooks/.
docs: $(RUN_STAMP) $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict -d build/site

$(PROTOS_VENV)/.stamp: protos/requirements.txt
	test -x $(PROTOS_VENV)/bin/python || $(PYTHON) -m venv $(PROTOS_VENV)
	$(PROTOS_VENV)/bin/python -m pip install -q -r protos/requirements.txt
	touch $@

protos: $(PROTOS_VENV)/.stamp
	$(PROTOS_VENV)/bin/python -m protos.generate

# The declared ranges of grpcio and protobuf, at both ends
# (two throwaway venvs; see .ci/deps_matrix.py).
deps-matrix:
	$(PYTHON) .ci/deps_matrix.py

clean:
	rm -rf build ext/*.so ext/*.c ext/*.html $(VENV)
