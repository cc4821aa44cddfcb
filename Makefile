# avvsr: every target sets up its own environment first, so each works on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?= cpu
DATA_ROOT ?= data/synth_av
# Keep the two cores for the work itself, not for oversubscribed BLAS threads.
export OMP_NUM_THREADS ?= 2
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: setup test test-all lint data bench bench-data bench-model bench-upscale bench-reference \
        reproduce-table reproduce-table-quick clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; the torch wheels come from this disk.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-all: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks experiments

data: setup
	$(BIN)/avvsr-synth --out $(DATA_ROOT)

bench: bench-data bench-model bench-upscale

# AVE_CLIPS: clips of the AVE-shaped set that section 5 generates and measures.
AVE_CLIPS ?= 20
bench-data: setup
	$(BIN)/python benchmarks/bench_data.py --ave-clips $(AVE_CLIPS)

bench-model: setup
	$(BIN)/python benchmarks/bench_model.py --train-step

bench-upscale: setup
	$(BIN)/python benchmarks/bench_upscale.py

# avvsr's backbones against BasicSR's (outputs after conversion, speed, memory); the first run
# installs BasicSR from PyPI into .cache/reference-venv.
bench-reference: setup
	$(BIN)/python benchmarks/reference_parity.py

reproduce-table: setup
	$(BIN)/python -m avvsr.reproduce --profile $(PROFILE)

reproduce-table-quick: setup
	$(BIN)/python -m avvsr.reproduce --profile quick

clean:
	rm -rf logs outputs multirun wandb lightning_logs .pytest_cache
