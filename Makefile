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

bench: $(STAMP) services
	$(PY) -m bench.landing --rows 1000000 --repeats 3

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .demo
