# shop — everything a fresh machine needs goes through this file.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
PROTO_FILES := $(shell find proto -name '*.proto')
GEN_STAMP := gen/.stamp
BREAKING_IMAGE := proto/released.binpb
PYTEST_ARGS ?=
# Storage backend of `make run` / `make bench`: sqlite (files under var/) or postgres
# (an embedded PostgreSQL under var/pg, unless SHOP_DATABASE_URL names a server).
DB ?= sqlite
# make test runs test files on this many workers (pytest-xdist; a file stays on one worker,
# so module fixtures are shared as before); most of the suite waits on processes, not CPU.
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2

CHROMIUM := /usr/bin/chromium

.PHONY: run test lint proto proto-deps release-contracts bench chaos clean venv browser-deps deploy deploy-check

run: $(STAMP) $(GEN_STAMP)
	DB=$(DB) $(PY) -m ops.run

test: $(STAMP) $(GEN_STAMP) proto-deps browser-deps deploy-check
	$(PY) -m pytest -m 'not chaos' -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# deploy/ is generated from ops/deploydesc.py: `make deploy` rewrites it.
deploy: $(STAMP)
	$(PY) -m ops.deploygen

# Offline: generated files fresh and consistent with the code, every applied overlay
# valid against the pinned Kubernetes schemas, compose against the compose-spec, the
# Dockerfile linted.
deploy-check: $(STAMP)
	@echo "==> deploy-check: deploy/ fresh and valid (offline)"
	$(PY) -m ops.deploygen --check
	$(PY) -m ops.deploycheck
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
	$(BIN)/hadolint Dockerfile
	$(PY) -m pytest -q -p no:cacheprovider tests/contract/test_deploy.py

chaos: $(STAMP) $(GEN_STAMP) proto-deps
	$(PY) -m pytest -m chaos tests/faults $(PYTEST_ARGS)

# PROFILE=1 adds py-spy flame graphs of the order scenario (var/bench/profile/);
# DB=postgres runs the event path and the order saga on PostgreSQL too, beside SQLite.
bench: $(STAMP) $(GEN_STAMP) $(BENCH_STAMP)
	DB=$(DB) $(PY) -m bench $(if $(filter 1 yes true,$(PROFILE)),--profile)

lint: $(STAMP) proto-deps
	$(BIN)/buf lint
	$(BIN)/ruff check services gateway ops tests bench
	$(BIN)/mypy

venv: $(STAMP)

# The bench's own extras (plot, profiler), only for `make bench`.
$(BENCH_STAMP): requirements-bench.lock $(STAMP)
	@echo "==> pip install: the bench's extras (requirements-bench.lock: plot, profiler)"
	$(PY) -m pip install --disable-pip-version-check --progress-bar on -r requirements-bench.lock
	@touch $@

# The venv is rebuilt only when the pinned set or the project metadata change. The first
# build takes a few minutes: each step says what it does first (`==> ...`), and pip shows
# its own progress, so a fresh machine never sits on a silent terminal.
$(STAMP): requirements.lock pyproject.toml
	@echo "==> venv: $(VENV) ($(PYTHON) -m venv)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> pip install: the pinned dependencies of requirements.lock into $(VENV)"
	$(PY) -m pip install --disable-pip-version-check --progress-bar on -r requirements.lock
	@echo "==> pip install: shop itself, editable"
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@echo "==> nats-server: $$($(PY) -c 'from ops.natsd import find_binary; print(find_binary())')"
	@touch $@

# The browser tests (tests/browser) drive Debian's chromium through playwright; playwright's
# own browser download is never used. Only `make test` needs it, never `make run`.
browser-deps:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=sudo; \
	  else echo "browser tests need $(CHROMIUM): run 'apt-get install -y chromium' as root" \
	    "(tests/browser fail without it)" >&2; exit 0; fi; \
	  echo "==> chromium: installing Debian's package for the browser tests (apt-get)"; \
	  $$SUDO apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium || \
	  echo "could not install chromium; tests/browser will fail until $(CHROMIUM) exists" >&2; \
	fi

# buf reads google/api protos from the installed googleapis-common-protos.
proto-deps: $(STAMP)
	@test -e proto_deps/google/api || echo "==> proto-deps: linking googleapis' protos for buf"
	@mkdir -p proto_deps/google
	@ln -sfn "$$($(PY) -c 'import google.api.annotations_pb2 as a, os; print(os.path.dirname(a.__file__))')" proto_deps/google/api

# Generated code is committed; it is rebuilt only when a contract changed.
$(GEN_STAMP): $(PROTO_FILES) | $(STAMP)
	@echo "==> proto: generating gen/ from proto/ (a contract changed)"
	$(PY) -m ops.protogen
	@touch $@

proto: $(STAMP)
	$(PY) -m ops.protogen
	touch $(GEN_STAMP)

# Deliberately record the current contracts as the released ones that
# `buf breaking` (run by the contract tests) compares against.
release-contracts: proto-deps
	$(BIN)/buf build proto -o $(BREAKING_IMAGE)

clean:
	rm -rf $(VENV) var proto_deps
