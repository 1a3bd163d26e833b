# One-command developer loop: `make demo` and `make test` build the environment themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install tools lint format docs docs-check test demo bench bench-throughput clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Prometheus' server and promtool check the alert rules and the dashboard's queries in tests.
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

CODE := model worker cli demo tests benchmarks tools

lint: install
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

format: install
	$(BIN)/ruff check --fix $(CODE)
	$(BIN)/ruff format $(CODE)

# The reference pages from the code, then the site, strictly (a broken link fails); offline.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

docs: install
	$(BIN)/python tools/gen_reference.py
	$(MKDOCS)

# What `make test` runs: the same, but a stale reference page fails instead of being rewritten.
docs-check: install
	$(BIN)/python tools/gen_reference.py --check
	$(MKDOCS)

test: lint tools docs-check
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/faultwatch demo

bench: install
	$(BIN)/python benchmarks/quality.py
	$(BIN)/python benchmarks/labels.py

bench-throughput: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis site
