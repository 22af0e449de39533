# audit-transfer: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
CARGO ?= cargo
# osmem-server: an in-memory OpenSearch-compatible server (PyPI) the sink tests run against.
OSMEM_BIN = $(shell $(VENV)/bin/python -c 'import osmem_server; print(osmem_server.resolve_binary())' 2>/dev/null)
DEMO_DIR := localtest/.run/demo

.PHONY: build demo test test-unit lint fmt compose-check deploy-check bench clean

build:
	$(CARGO) build --release

$(VENV)/.installed: localtest/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r localtest/requirements.txt
	touch $@

$(VENV)/.deploy-installed: deploy/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r deploy/requirements.txt
	touch $@

## demo: SQLite source with sample audit rows -> JSON-lines files; needs no server.
demo:
	$(CARGO) build --release --quiet
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(PYTHON) localtest/make_demo_db.py $(DEMO_DIR)/audit.sqlite3 200
	DATABASE_URL=sqlite:///$(DEMO_DIR)/audit.sqlite3 SINK=file OUTPUT_PATH=$(DEMO_DIR)/output \
	  target/release/audit-transfer run
	@echo "--- wrote $$(cat $(DEMO_DIR)/output/*.jsonl | wc -l) documents to $(DEMO_DIR)/output:"
	@ls $(DEMO_DIR)/output
	@head -n 2 $(DEMO_DIR)/output/*.jsonl | head -n 3

## test: unit and end-to-end tests against PostgreSQL, MariaDB, SQLite and osmem-server. A plain
## `cargo test` skips the tests whose services are missing; here a missing one fails the run.
test: $(VENV)/.installed
	@test -x "$(OSMEM_BIN)" || { echo "osmem-server binary not found in $(VENV)"; exit 1; }
	AUDIT_TRANSFER_REQUIRE_SERVICES=1 OSMEM_SERVER_BIN="$(OSMEM_BIN)" $(CARGO) test --all-targets

test-unit:
	$(CARGO) test --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## compose-check: docker-compose.yml is accepted by `docker-compose config` (no engine needed).
compose-check:
	@created=; if [ ! -f .env ]; then cp .env.example .env; created=1; fi; \
	  docker-compose config -q; rc=$$?; [ -n "$$created" ] && rm -f .env; exit $$rc
	@echo "docker-compose.yml: valid"

## deploy-check: Helm lint + template of deploy/helm (Helm's engine from PyPI), yamllint, and every
## rendered and plain manifest in deploy/ validated against the Kubernetes API schemas.
deploy-check: $(VENV)/.deploy-installed
	$(VENV)/bin/python deploy/check.py

fmt:
	$(CARGO) fmt --all

## bench: end-to-end throughput and memory against the floor (BENCH_FULL=1: 1,000,000 rows).
bench: $(VENV)/.installed
	@command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time; }
	$(CARGO) build --release --quiet
	OSMEM_SERVER_BIN="$(OSMEM_BIN)" $(CARGO) bench --bench e2e

clean:
	rm -rf localtest/.run $(VENV)
	$(CARGO) clean
