# Common tasks. `make setup` and `make test` are what the README and CI run.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint format demo bench clean

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

# The quick benchmarks; the others need a trained workspace or tens of minutes
# (benchmarks/README.md lists them all with their commands).
bench:
	$(BIN)/python -m benchmarks.ingest_vs_picai_prep
	$(BIN)/python -m benchmarks.generative_training --profiles tiny cpu

clean:
	rm -rf demo .pytest_cache
