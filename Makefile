# Common tasks. `make setup` and `make test` are what the README and CI run.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint format demo demo-full bench bench-full bench-readme clean

setup:
	bash deploy/install.sh

# --durations: the suite's slowest tests, listed at the end (issue 15 asks for a 10-minute suite)
test: lint
	$(BIN)/pytest -n 2 -q --durations=20

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The whole consortium on phantom data (tiny profile, about 10 minutes on 2 cores; `demo-full`
# runs the cpu profile, about 30). Phantom data checks the machinery, not clinical truth.
demo:
	$(BIN)/coordinator demo --quick --workspace demo-quick

demo-full:
	$(BIN)/coordinator demo --workspace demo-full

# Every benchmark, each figure next to its peer, in one run (benchmarks/README.md):
# `bench` at small sizes (a few minutes on 2 cores), `bench-full` at the documented sizes.
# Both write benchmarks/results/run-YYYYMMDD-HHMMSS/benchmarks.{json,md}. Workspaces, e.g.
# make bench-full BENCH_ARGS="--site-workspace WS --coordinator-workspace CWS"
BENCH_ARGS ?=
bench:
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)

bench-full:
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# The README's benchmark tables, written again from the run folders its marker names.
bench-readme:
	$(BIN)/python -m benchmarks.readme_tables

clean:
	rm -rf demo-quick demo-full .pytest_cache
