# The two commands of the README: `make test` and `make demo`. Both set up everything they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo services migrate bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

services:
	bash ops/ensure_services.sh

test: $(STAMP) services
	$(PY) -m pytest

demo: $(STAMP)
	$(VENV)/bin/indici-ingest demo

migrate: $(STAMP)
	$(VENV)/bin/indici-ingest migrate

# End-to-end benchmark (bench/e2e.py): 100k, 1M and 5M rows through the Celery path, bare COPY, dlt,
# 1 vs 2 workers, 20 weekly Patients files; results in bench/results/. BENCH_ARGS=--quick for a smoke run.
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,demo,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) services
	$(PY) -m bench.e2e $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .demo
