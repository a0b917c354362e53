# Common tasks. `make setup` and `make test` are what the README and CI run.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint format demo bench bench-full clean

setup:
	bash deploy/install.sh

test: lint
	$(BIN)/pytest -n 2 -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# A small phantom hospital, end to end on site (tiny profile, about a minute on 2 cores).
# Phantom data checks the machinery, not clinical truth.
demo:
	$(BIN)/site-agent phantom --out demo/aurora --cases 16 --institution aurora
	$(BIN)/site-agent train --dicom-dir demo/aurora/dicom --labels demo/aurora/labels.csv \
		--masks demo/aurora/masks --workspace demo/site-aurora
	$(BIN)/site-agent generate --n 8 --workspace demo/site-aurora

# Every benchmark, each figure next to its peer, in one run (benchmarks/README.md):
# `bench` at small sizes (a few minutes on 2 cores), `bench-full` at the documented sizes.
# Both write benchmarks/results/run-YYYYMMDD-HHMMSS/benchmarks.{json,md}. Workspaces, e.g.
# make bench-full BENCH_ARGS="--site-workspace WS --coordinator-workspace CWS"
BENCH_ARGS ?=
bench:
	$(BIN)/python -m benchmarks --quick $(BENCH_ARGS)

bench-full:
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf demo .pytest_cache
