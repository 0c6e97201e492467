# stream-monitor developer workflow. Two commands: `make demo` and `make test`.
# Local Kafka/Redis for tests are managed by scripts/services.sh (see docs/development.md).

SHELL := /bin/bash
.DEFAULT_GOAL := help

# Interpreter used to create .venv (not named PYTHON: scripts/services.sh reads that one).
PYTHON3 ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
PYTEST_ARGS ?= -m "not slow"
ARGS ?=

# The venv's python if it exists (it has confluent_kafka for the real Kafka readiness check).
SERVICES_PYTHON = $${PYTHON:-$$(if [ -x $(VENV_PY) ]; then echo $(CURDIR)/$(VENV_PY); else echo python3; fi)}

.PHONY: help venv demo test test-slow services-up services-down services-status lint clean

help:
	@echo "make venv            create .venv and install stream-monitor with the dev extras"
	@echo "make demo [ARGS=...] run 'stream-monitor demo'"
	@echo "make test            start Kafka+Redis, run pytest (PYTEST_ARGS, default: -m \"not slow\"), stop them"
	@echo "make test-slow       the long suites only (-m slow), also with the services"
	@echo "make services-up     start local Kafka (127.0.0.1:19092) and Redis (127.0.0.1:16379); see .services/env"
	@echo "make services-down   stop them"
	@echo "make services-status show what is running"
	@echo "make lint            ruff check, ruff format --check, mypy"
	@echo "make clean           stop services, remove .venv, .services and caches"

venv: $(VENV)/.installed

# Re-installs only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@if [ ! -x $(VENV)/bin/pip ]; then \
	  rm -rf $(VENV); \
	  echo "$(PYTHON3) -m venv $(VENV)"; \
	  $(PYTHON3) -m venv $(VENV) || { \
	    rm -rf $(VENV); \
	    echo "error: '$(PYTHON3) -m venv' failed. On Debian/Ubuntu: apt-get install -y python3-venv" >&2; \
	    exit 1; }; \
	fi
	$(VENV)/bin/pip install -e '.[dev]'
	@touch $@

demo: venv
	$(VENV)/bin/stream-monitor demo $(ARGS)

test: venv
	PYTHON=$(CURDIR)/$(VENV_PY) scripts/test.sh $(PYTEST_ARGS)

# The long suites (the 12-kill crash test, ...): CI runs them after `make test`.
test-slow: venv
	PYTHON=$(CURDIR)/$(VENV_PY) scripts/test.sh -m slow

services-up:
	PYTHON="$(SERVICES_PYTHON)" scripts/services.sh up

services-down:
	scripts/services.sh down

services-status:
	@PYTHON="$(SERVICES_PYTHON)" scripts/services.sh status

lint: venv
	$(VENV)/bin/ruff check stream_monitor tests && \
	  $(VENV)/bin/ruff format --check stream_monitor tests && \
	  $(VENV)/bin/mypy

clean:
	-scripts/services.sh down
	rm -rf $(VENV) .services .pytest_cache .mypy_cache .ruff_cache build dist test-artifacts *.egg-info
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
