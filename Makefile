# Common tasks. `make setup` and `make test` are what the README and CI run.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test lint format demo-data bench clean

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

# A small phantom site, scanned and ingested (phantom data checks the machinery only).
demo-data:
	$(BIN)/site-agent phantom --out demo/aurora --cases 12 --institution aurora
	$(BIN)/site-agent ingest --dicom-dir demo/aurora/dicom --labels demo/aurora/labels.csv \
		--workspace demo/site-aurora --masks demo/aurora/masks

bench:
	$(BIN)/python -m benchmarks.ingest_vs_picai_prep

clean:
	rm -rf demo .pytest_cache
