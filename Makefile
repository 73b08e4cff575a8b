# sfprov — Salesforce order provisioning on Kafka.
# `make up` runs the pipeline locally (real Kafka broker, sandboxes, connector, worker, sink);
# `make test` runs the test suite (CI runs exactly this). `make help` lists everything.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# pyproject.toml's requires-python; a virtualenv made with another Python is made again
PY_SUPPORTED := import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)
# SFPROV_STATE_DIR as the Python side reads it (the environment over .env or $SFPROV_ENV_FILE,
# else .state): common.settings needs only the standard library, so no virtualenv yet
# (blank is unset, as for the processes); read with the virtualenv's Python once there is one,
# the Python that `make up` ran with. Empty when Python cannot read it (an unreadable
# SFPROV_ENV_FILE, a Python before 3.11): the targets using it stop with Python's error
# ($(state_ok)) instead of using ./.state, which is not where the state is
STATE_PY := $(shell $(PY) -c '$(PY_SUPPORTED)' 2>/dev/null && echo $(PY) || echo $(PYTHON))
STATE_READ := from common.settings import environment as e; v = e().get("SFPROV_STATE_DIR") or ""; print(v if v.strip() else ".state")
STATE := $(shell $(STATE_PY) -c '$(STATE_READ)' 2>/dev/null)
state_ok = [ -n '$(subst ','\'',$(STATE))' ] || { $(STATE_PY) -c '$(STATE_READ)' 2>&1 >/dev/null | tail -n 1 >&2; echo "error: cannot read SFPROV_STATE_DIR with $(STATE_PY) (the line above); nothing done" >&2; exit 1; }
# A path as one shell word, literal (single-quoted): a recipe uses $(call sh,$(STATE)), never
# $(STATE) bare, so a space splits nothing and `~` or `$` stay what they are to Python
sh = '$(subst ','\'',$(1))'
export PYTHONPATH := $(CURDIR)

.DEFAULT_GOAL := help
.PHONY: help install jars promtool up down status logs topics test test-fast lint demo bench chaos clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The virtualenv is made again when its Python is not PY_SUPPORTED or it has no pip (`python
# -m venv` interrupted, python3-venv missing): a half-made one passed the Python check, and
# every `pip install` failed with "No module named pip"
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found: install Python 3.11"; exit 1; }
	@$(PYTHON) -c '$(PY_SUPPORTED)' || { echo "error: Python 3.11 to 3.13 required ($(PYTHON) is $$($(PYTHON) -V)); set PYTHON=python3.11"; exit 1; }
	@{ $(PY) -c '$(PY_SUPPORTED)' && $(PY) -m pip --version >/dev/null; } 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP) ## Create the virtualenv and install the pinned dependencies

jars: $(STAMP) ## Resolve the Kafka broker's jars and Kafka's CLI tools with Maven (cached)
	@$(PY) -m ops.kafka_local jars
	@$(PY) -m ops.kafka_tools

up: install jars ## Start everything locally (idempotent); prints where to look
	@$(PY) -m ops.stack up

down: ## Stop everything `make up` started
	@if [ -x $(PY) ]; then $(PY) -m ops.stack down; else echo "nothing to stop"; fi

status: $(STAMP) ## Show what runs
	@$(PY) -m ops.stack status

# Each log by name (ops/stack.py's and ops/sandboxes.py's plan, the supervisor's own): a glob
# expands once, and before `make up` to nothing; tail -F waits for a file that is not there yet
# and follows a log across its rotation (SFPROV_LOG_MAX_MB)
LOG_NAMES := supervisor salesforce-sandbox whmcs-sandbox registry-sandbox connector worker sink
logs: ## Follow the logs of every process, the local broker's too (also those not written yet)
	@$(state_ok)
	@mkdir -p $(call sh,$(STATE)/logs) $(call sh,$(STATE)/kafka/broker/logs) && \
	  tail -n 50 -F $(foreach n,$(LOG_NAMES),$(call sh,$(STATE)/logs/$(n).log)) \
	  $(call sh,$(STATE)/kafka/broker/logs/server.log) $(call sh,$(STATE)/kafka/broker/logs/stdout.log)

topics: install ## Create missing topics and report config drift
	@$(PY) -m ops.topics

PROMTOOL := $(STATE)/tools/bin/promtool
P := $(call sh,$(PROMTOOL))
DEB := $(call sh,$(STATE)/tools/deb)

promtool: ## Prometheus's rule checker for the alert-rule tests: from PATH, else from Debian's package (no install, no root)
	@$(state_ok)
	@if [ -x $(P) ]; then :; \
	elif command -v promtool >/dev/null; then mkdir -p "$$(dirname $(P))" && ln -sf "$$(command -v promtool)" $(P); \
	elif command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then \
	  rm -rf -- $(DEB) && mkdir -p $(DEB) "$$(dirname $(P))" && \
	  (cd $(DEB) && apt-get download -q prometheus >/dev/null 2>&1) && \
	  dpkg-deb -x $(DEB)/prometheus_*.deb $(DEB)/root && \
	  cp $(DEB)/root/usr/bin/promtool $(P) && rm -rf -- $(DEB) && \
	  echo "promtool: "$(P)" (Debian's prometheus package)" || \
	  echo "promtool: could not fetch Debian's prometheus package; the alert-rule test needs it"; \
	else echo "promtool: not on PATH and no apt-get; the alert-rule test needs it"; fi

# The suite's processes (pytest-xdist): each runs whole test files against a session broker of
# its own; 1 runs it in this process. Two halve the time on a 2-core box: the tests mostly wait.
TEST_WORKERS ?= 2

test: install jars promtool ## Run the whole test suite (starts and stops its own brokers)
	@$(PY) -m pytest -q -p no:cacheprovider --durations=15 \
	  $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

test-fast: install ## Unit tests only (no broker)
	@$(PY) -m pytest -q -p no:cacheprovider -m "not broker and not e2e"

lint: install ## ruff + mypy
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy common connectors streams sinks ops
	@$(VENV)/bin/mypy --follow-imports=silent bench  # the test helpers it imports are not typed to this standard

demo: install ## Approve N seeded Orders in the sandbox and watch them provision (N, else SFPROV_DEMO_COUNT, else 20)
	@$(PY) -m ops.cli demo $${N:+--count $$N}

bench: install jars ## Benchmark the whole pipeline; writes bench/results/
	@$(PY) -m bench.pipeline

chaos: install jars ## Kill processes at random under load; checks the invariants
	@$(PY) -m bench.chaos

# Removes the state directory as Python reads it (one literal path), never an empty path, /,
# $HOME or this checkout, nor a directory holding either (`..`, ~/work: the checkout with
# them), nor a symbolic link to one of them
clean: down ## Remove local state (broker data, sandbox databases, logs)
	@$(state_ok)
	@state=$(call sh,$(STATE)); case "$$state" in /*) at="$$state";; *) at="./$$state";; esac; \
	real=$$(cd -P -- "$$at" 2>/dev/null && pwd -P); \
	home=$$([ -n "$$HOME" ] && cd -P -- "$$HOME" 2>/dev/null && pwd -P); \
	holds() { [ -n "$$real" ] && case "$$1/" in "$$real"/*) true;; *) false;; esac; }; \
	if [ -z "$$state" ] || [ "$$real" = / ] || [ "$$real" = // ] || holds "$$(pwd -P)" || \
	   { [ -n "$$home" ] && holds "$$home"; }; then \
	  echo "error: refusing to remove SFPROV_STATE_DIR '$$state'$${real:+ ($$real)}: not a state directory" >&2; \
	  exit 1; \
	fi; \
	echo "rm -rf -- '$$state'"; rm -rf -- "$$state"
