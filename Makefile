# Ketter 3.0. `make demo` and `make test` install what they need themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: help bootstrap venv demo test migrate up down dku bench lint compose-config clean

help:
	@echo "make demo     run the engine on a generated Pro Tools-like session (no DB/Redis needed)"
	@echo "make test     bootstrap system packages, venv, then every test"
	@echo "make migrate  upgrade the database to head"
	@echo "make up/down  start/stop API + worker natively (Postgres, Redis started if needed)"
	@echo "make dku      health check + smoke transfers, report in docs/dku_reports/"
	@echo "make bench    two-host lab benchmark (long)"

$(STAMP): pyproject.toml
	bash scripts/bootstrap.sh tools
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

bootstrap:
	bash scripts/bootstrap.sh services

demo: $(STAMP)
	$(PY) -m mvp_core.demo

test: $(STAMP)
	bash scripts/bootstrap.sh services
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

migrate: $(STAMP)
	bash scripts/bootstrap.sh services
	$(PY) -m mvp_core.db.migrate

up: $(STAMP)
	bash scripts/bootstrap.sh services
	bash infra/native_up.sh

down:
	bash infra/native_down.sh

dku: $(STAMP)
	KETTER_PYTHON=$(PY) bash infra/native_dku.sh $(DKU_ARGS)

bench: $(STAMP)
	bash scripts/bootstrap.sh services
	bash infra/lab/bench.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check mvp_core tests || true

compose-config:
	KETTER_API_TOKEN=$${KETTER_API_TOKEN:-validate-only} bash infra/compose.sh config -q

clean:
	rm -rf $(VENV) .run
