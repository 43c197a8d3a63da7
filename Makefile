# `make demo`, `make test` and `make docs` set up .venv (if missing or stale) and run the main
# job, the tests or the documentation build (docs/_build/html, every warning an error).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs lint format benchmark benchmark-quick clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pyro_scvae.fit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

docs: $(STAMP)  # the notebooks are shown with their committed outputs, not executed
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

benchmark: $(STAMP)  # about 2 h 10 min on 2 cores
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/run.py --jobs 2

benchmark-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf pyro_scvae_out .pytest_cache .ruff_cache docs/_build docs/generated
